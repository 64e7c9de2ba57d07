"""Teacher outputs: samples and offline soft labels, cached by content hash.

One teacher pass serves every technique in a study: samples (batched KV-cache generation,
greedy or temperature/top-p) and, along each sample, the teacher's log-probs over the whole
vocabulary (the world's vocabulary is small) or its top-k with a tail bucket. The cache key
hashes the organism, the teacher's weights (the tensors actually loaded, so outputs of a
damaged teacher never serve a sound one), the prompts and the sampling settings. Each entry
records the sha256 of its files in `meta.json`; an entry that does not match them (a
truncated or scrambled file) is reported and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from doublebind.errors import DoublebindError
from doublebind.integrity import CorruptCacheError, file_sha256, verify_file
from doublebind.prompts import Prompt, prompts_hash
from doublebind.sampling import generate
from doublebind.training.batching import collate, response_logprobs
from doublebind.training.objectives import topk_with_tail
from doublebind.world import vocab
from doublebind.types import Example


@dataclass
class TeacherOutputs:
    prompts: list[Prompt]
    responses: list[list[str]]  # sampled responses, ending in <eos> unless cut at max_new_tokens
    soft: dict[str, torch.Tensor]  # "logprobs": [N, T, V] or "indices" [N, T, k] + "logprobs" [N, T, k+1]
    key: str

    def examples(self) -> list[Example]:
        return [Example(p.tokens, r, p.family) for p, r in zip(self.prompts, self.responses)]


def weights_sha256(model) -> str:
    """sha256 of a model's parameters and buffers as loaded (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def outputs_key(organism_hash: str, prompts: list[Prompt], scfg, seed: int, teacher_sha: str | None = None) -> str:
    """The cache key of teacher outputs; `teacher_sha` (the teacher's weights hash) where known."""
    spec = {"organism": organism_hash, "prompts": prompts_hash(prompts),
            "sampling": scfg.model_dump(mode="json"), "seed": seed}
    if teacher_sha is not None:
        spec["teacher_weights"] = teacher_sha
    blob = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def soft_labels(model, examples: list[Example], width: int, kind: str = "full", k: int = 8,
                batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Log-probs of `model` at each response position, padded to `width` positions."""
    full = None
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            logp = response_logprobs(model, collate(chunk)).cpu()  # [B, S-1, V]
            if full is None:
                full = torch.zeros((len(examples), width, logp.shape[-1]))
            for b, e in enumerate(chunk):
                s = len(e.prompt) - 1
                n = min(len(e.response), width)
                full[i + b, :n] = logp[b, s : s + n]
    if kind == "full":
        return {"logprobs": full}
    idx, top = topk_with_tail(full, k)
    return {"indices": idx, "logprobs": top}


def teacher_outputs(teacher, organism_hash: str, prompts: list[Prompt], scfg, seed: int,
                    cache_dir: Path | None) -> TeacherOutputs:
    """Sample the teacher on `prompts` and label the samples, or load them from the cache
    (a corrupt cache entry is reported and recomputed)."""
    key = outputs_key(organism_hash, prompts, scfg, seed, weights_sha256(teacher))
    folder = Path(cache_dir) / "teacher" / key if cache_dir else None
    if folder is not None and folder.exists():
        try:
            return _load(folder, prompts, key, hint="")
        except CorruptCacheError as e:
            from doublebind.ui import console

            console.print(f"[yellow]corrupt cache entry:[/] {e}; recomputing it", highlight=False, soft_wrap=True)
    ids = vocab.token_ids()
    if scfg.soft_labels == "topk" and scfg.top_k > len(ids):  # it was an internal error, as the labels were taken
        raise DoublebindError(f"sampling.top_k ({scfg.top_k}) is larger than the embedded world's vocabulary "
                              f"({len(ids)} tokens); use soft_labels: full, or a top_k of at most {len(ids)}")
    outs = generate(teacher, [vocab.encode(p.tokens) for p in prompts], scfg.max_new_tokens,
                    eos_id=ids[vocab.EOS], pad_id=ids[vocab.PAD], temperature=scfg.temperature,
                    top_p=scfg.top_p, seed=seed)
    responses = [vocab.decode(o) for o in outs]
    result = TeacherOutputs(prompts, responses, {}, key)
    if scfg.soft_labels != "none":
        result.soft = soft_labels(teacher, result.examples(), scfg.max_new_tokens, scfg.soft_labels, scfg.top_k)
    if folder is not None:
        _save(result, folder, scfg)
    return result


def _save(res: TeacherOutputs, folder: Path, scfg) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "samples.jsonl", "w") as f:
        for p, r in zip(res.prompts, res.responses):
            resp = r if r and isinstance(r[0], int) else " ".join(r)  # token ids, or world tokens
            f.write(json.dumps({"prompt": " ".join(p.tokens), "response": resp,
                                "family": p.family, "context": p.context}) + "\n")
    if res.soft:
        save_file({k: v.contiguous() for k, v in res.soft.items()}, str(tmp / "soft.safetensors"))
    files = {name: file_sha256(tmp / name) for name in ("samples.jsonl", "soft.safetensors") if (tmp / name).is_file()}
    (tmp / "meta.json").write_text(json.dumps({"key": res.key, "sampling": scfg.model_dump(mode="json"),
                                               "n": len(res.prompts), "files": files}, indent=2))
    if folder.is_file() or folder.is_symlink():  # a damaged entry (reported by the caller) that is not a folder
        folder.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load(folder: Path, prompts: list[Prompt], key: str, hint: str = "; delete the entry") -> TeacherOutputs:
    """An entry of the cache, after checking its files against the hashes in its meta.json;
    a `CorruptCacheError` names the entry and the file otherwise."""
    what = f"teacher-output cache entry {folder}"
    if not folder.is_dir():
        raise CorruptCacheError(f"{what}: not a folder{hint}")
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        raise CorruptCacheError(f"{what}: meta.json is missing or not valid JSON{hint}") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or "samples.jsonl" not in files:
        raise CorruptCacheError(f"{what}: meta.json records no file hashes (written before they were "
                                f"checked){hint}")
    on_disk = {p.name for p in folder.iterdir() if p.name in ("samples.jsonl", "soft.safetensors")}
    if on_disk != set(files):
        raise CorruptCacheError(f"{what}: holds {sorted(on_disk)}, meta.json records {sorted(files)}{hint}")
    try:
        for name, sha in files.items():
            verify_file(folder / name, sha, what)
    except CorruptCacheError as e:
        raise CorruptCacheError(f"{e}{hint}") from None
    try:
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        soft = load_file(str(folder / "soft.safetensors")) if "soft.safetensors" in files else {}
    except Exception as e:
        raise CorruptCacheError(f"{what}: {str(e).splitlines()[0]}{hint}") from None
    if len(rows) != len(prompts):
        raise CorruptCacheError(f"{what}: {len(rows)} rows for {len(prompts)} prompts{hint}")
    responses = [r["response"] if isinstance(r["response"], list) else r["response"].split() for r in rows]
    return TeacherOutputs(prompts, responses, soft, key)
