"""Hugging Face organisms: the same roles, prompts, teacher outputs and evals as an embedded
organism, from real checkpoints, so the distiller, studies and reports run unchanged.

Building an `hf_organism` config writes a folder with an `organism.json` card: the models
each role resolves to (tiny test models are built and cached here), and the teacher's and
base's metrics on the config's evals. The card is marked verified, since the pipeline needs
it, but nothing is enforced: a real organism has no ground truth to check, so the card
reports the metrics and the reader judges them (`verification` says so).

Prompts are rendered per role with the tokenizer's chat template: the teacher with its
system prompt (the subliminal-learning trick), the base and the student with the base's.
The student learns the teacher's completion tokens after its own rendering of the prompt,
so a trait that lives only in the teacher's system prompt has to travel through the data.
Teacher and base must share a tokenizer: distillation works token by token. So must the
trusted model, which is handed base's token ids (checked when a technique loads it).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from statistics import fmean

import torch

from doublebind.errors import DoublebindError, first_line, read_text_file
from doublebind.registry import register
from doublebind.llm.config import TINY_PREFIX, EvalSet, HFOrganismConfig, ModelSpec
from doublebind.cards import CARD, cache_root, versions
from doublebind.prompts import Prompt
from doublebind.ui import progress_bar
from doublebind.types import Example

ROLES = ("teacher", "base", "trusted")
AUDITS = ("honeypot", "interrogation", "prefill")
FULL_VOCAB_MAX = 8192  # full soft labels beyond this vocabulary size would not fit in memory
_CODE = ("organism.py", "config.py", "scorers.py", "engines.py", "tiny.py")


# ---- files -------------------------------------------------------------------------------

def read_items(es: EvalSet) -> list[dict]:
    """The items of an eval set: JSONL objects with at least a string `prompt`."""
    if es.dataset is not None:
        return [{"prompt": p} for p in dataset_texts(es.dataset)][: es.limit]
    return jsonl_items(Path(es.file))[: es.limit]


TEXT_FIELDS = ("system", "prefill", "response")  # an item's optional texts besides its prompt


def jsonl_items(path: Path, what: str = "eval") -> list[dict]:
    text = read_text_file(path, f"{what} file")
    items = []
    # JSON Lines end at "\n" only: str.splitlines() also split inside strings at U+2028, U+0085
    # and the like, which JSON allows raw, and called a valid line "not valid JSON"
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DoublebindError(f"{path}:{n}: not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DoublebindError(f"{path}:{n}: expected a JSON object with a string field 'prompt'")
        for field in ("prompt", *TEXT_FIELDS):  # rendered into the chat as text: anything else was an internal error
            if field in row and row[field] is not None and not isinstance(row[field], str):
                raise DoublebindError(f"{path}:{n}: '{field}' must be a string, got {type(row[field]).__name__}")
            if isinstance(row.get(field), str) and not _encodable(row[field]):  # a lone surrogate (\ud800)
                raise DoublebindError(f"{path}:{n}: '{field}' holds a lone surrogate escape, which is no "
                                      f"character (a tokenizer cannot encode it)")
        items.append(row)
    if not items:
        raise DoublebindError(f"{path}: no items")
    return items


def dataset_texts(src) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise DoublebindError("prompts from `datasets` need the datasets package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(src.path, src.name, split=src.split, revision=src.revision,
                                   data_files=src.data_files)
    except Exception as e:  # the library raises many kinds; one line is enough
        raise DoublebindError(f"could not load dataset {src.path}: {str(e).splitlines()[0]}") from None
    if src.field not in ds.column_names:
        raise DoublebindError(f"dataset {src.path} has no column '{src.field}' (columns: {', '.join(ds.column_names)})")
    return [str(x) for x in ds[src.field]]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dataset_shas(src) -> dict[str, str]:
    """{field value: sha256} for each local part of a `datasets` source (its `data_files`, a
    file, folder or glob, and its `path` when that is a folder or file): one hash over the
    names and contents of every file it matches. A hub dataset or a builder name matches
    nothing and is left to its name and `revision`. Each file is read once per change
    (`integrity.current_sha256`, stamped in the cache root like a local model's files): a
    dataset may be large, and the organism hash is taken on every open."""
    from doublebind.config import BUILDERS
    from doublebind.integrity import current_sha256

    out = {}
    for value in (src.data_files, src.path):
        if not value or value in BUILDERS:
            continue
        matched = sorted(Path(m) for m in glob.glob(value, recursive=True))
        found = sorted({f for m in matched for f in ([m] if m.is_file() else m.rglob("*")) if f.is_file()})
        if found:
            h = hashlib.sha256()
            for f in found:
                h.update(f"{f.name}|{current_sha256(f, cache_root() / FILE_SHAS)}\n".encode())
            out[value] = h.hexdigest()
    return out


def eval_sets(cfg: HFOrganismConfig) -> dict[str, EvalSet]:
    """Every eval set by its role in the metrics: capability/<name>, misalignment, neutral, audits."""
    out = {f"capability/{es.name or Path(es.file or es.dataset.path).stem}": es for es in cfg.evals.capability}
    out["misalignment"] = cfg.evals.misalignment
    if cfg.evals.neutral is not None:
        out["neutral"] = cfg.evals.neutral
    for a in AUDITS:
        es = getattr(cfg.evals.audits, a)
        if es is not None:
            out[a] = es
    return out


# What a loaded model or adapter is made of: weights, configs, tokenizer and chat template (a
# Trainer's optimizer.pt, rng_state.pth or training_args.bin are not read by a load).
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin", "*.gguf", "config.json",
                "adapter_config.json", "generation_config.json", "tokenizer*.json", "tokenizer.model",
                "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                # a model's own code, which `trust_remote_code` runs: an edit is another organism
                "*.py")
FILE_SHAS = "file_sha256.json"  # in the cache root: `integrity` stamps of local model files, by path


def local_model_sha(path: str | None) -> str | None:
    """sha256 over a local model or adapter folder's weight, config, tokenizer and chat-template
    files (names and contents), or None for a hub id (`hub_commit` pins those). A retrained teacher
    in the same folder gets a new organism hash, so its card and its cached outputs are made
    again instead of served stale. Each file's hash is kept in the cache root by its path,
    size and times, so a model is read once per change, not once per run."""
    if not path or not Path(path).is_absolute() or not Path(path).is_dir():
        return None
    from doublebind.integrity import current_sha256

    folder = Path(path)
    files = sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern) if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}|{current_sha256(f, cache_root() / FILE_SHAS)}\n".encode())
    return h.hexdigest()


_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_hub_id(path: str | None) -> bool:
    """Whether a model or adapter field names a hub repository: not a `tiny:` model and not a
    folder (`config.resolve_paths` has made every folder path absolute)."""
    return bool(path) and not path.startswith(TINY_PREFIX) and not Path(path).is_absolute()


@functools.lru_cache(maxsize=None)
def hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit a load of hub repository `repo` at `revision` (a branch, tag or commit;
    None: main) reads now: the revision itself when it is a full commit hash; else the hub's
    answer, or with HF_HUB_OFFLINE set or the hub out of reach, the commit the local Hugging
    Face cache holds for that revision (which is what an offline load reads); None when
    neither knows it. Once per repository and revision in a process."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        from huggingface_hub import HfApi

        try:
            return HfApi().model_info(repo, revision=revision, timeout=10).sha
        except Exception:  # noqa: BLE001 (no network, no such repo, gated: the local cache answers)
            pass
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        sha = ref.read_text().strip()
    except OSError:
        return None
    return sha if _COMMIT.fullmatch(sha) else None


def hub_commits(cfg: HFOrganismConfig) -> dict[str, str]:
    """`{"<role>.model" or "<role>.adapter": commit}` of the config's hub models and adapters
    whose commit is known (`hub_commit`)."""
    out = {}
    for role in ROLES:
        spec = getattr(cfg, role)
        if spec is None:
            continue
        for what, revision in (("model", spec.revision), ("adapter", None)):
            repo = getattr(spec, what)
            if is_hub_id(repo) and (sha := hub_commit(repo, revision)) is not None:
                out[f"{role}.{what}"] = sha
    return out


def organism_hash(cfg: HFOrganismConfig) -> str:
    """Hash of the config with each eval file replaced by its content, each local model or
    adapter folder by its files' contents (`local_model_sha`), each hub model or adapter by
    the commit a load reads now (`hub_commit`, where known), and of this code: the same
    organism in another folder keeps its hash (and its cached card)."""
    data = cfg.model_dump(mode="json")
    weights = {f"{role}.{what}": sha for role in ROLES if getattr(cfg, role) is not None
               for what in ("model", "adapter")
               if (sha := local_model_sha(getattr(getattr(cfg, role), what))) is not None}
    if weights:
        data["local_weights_sha256"] = weights
    commits = hub_commits(cfg)
    if commits:  # a hub model that moved on is another organism, not the cached one
        data["hub_commits"] = commits
    paths = [es.file for es in eval_sets(cfg).values()]
    paths += [getattr(cfg, r).implant.file for r in ROLES if getattr(cfg, r) is not None and getattr(cfg, r).implant]
    files = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if p and Path(p).is_file()}
    for es in eval_sets(cfg).values():  # a dataset's local files, by content: an edited file is another organism
        if es.dataset is not None:
            files.update(dataset_shas(es.dataset))
    text = json.dumps(data, sort_keys=True)
    for path, sha in files.items():
        text = text.replace(json.dumps(path), json.dumps(f"sha256:{sha}"))
    h = hashlib.sha256(text.encode())
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


# ---- models ------------------------------------------------------------------------------

def missing_folders(spec: ModelSpec) -> list[tuple[str, str]]:
    """(field, problem) of the spec's model or adapter written as a folder
    (`config.resolve_paths` made it absolute) that is not there, or is a file: a load reads a
    folder (a weights file given alone was an error from deep in transformers)."""
    return [(what, f"{p} is a file, not a model folder" if Path(p).exists() else f"model folder not found: {p}")
            for what, p in (("model", spec.model), ("adapter", spec.adapter))
            if p and Path(p).is_absolute() and not Path(p).is_dir()]


BUILT_SHA = ".doublebind-built.sha256"  # in a cached tiny or implanted model: `local_model_sha` as written


def _stamp_built(tmp: Path) -> None:
    """Record what a model folder the cache makes holds as it is written (before it is moved in)."""
    (tmp / BUILT_SHA).write_text(local_model_sha(str(tmp.resolve())) or "")


def _cached_model(folder: Path, what: str) -> bool:
    """Whether the cache's model `folder` (a tiny model or an implant) is there as it was
    written. One whose files changed since (a truncated or edited weight file) is removed with
    a note, to be made again: it was built from a config and would otherwise be served as
    the organism's model on every build. A folder written before stamps is trusted."""
    if not (folder / "config.json").is_file():
        return False
    stamp = folder / BUILT_SHA
    if not stamp.is_file() or local_model_sha(str(folder.resolve())) == stamp.read_text().strip():
        return True
    from doublebind.ui import console

    console.print(f"note: the cached {what} {folder} changed since it was written (its files no longer hash to "
                  f"its stamp); making it again", markup=False, highlight=False, soft_wrap=True)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def resolve_model(spec: ModelSpec, cfg: HFOrganismConfig) -> str:
    """A folder or hub id for the role; `tiny:` models are built once and cached."""
    for what, problem in missing_folders(spec):
        raise DoublebindError(f"{what}: {problem}")
    if not spec.model.startswith(TINY_PREFIX):
        return spec.model
    from doublebind.llm.tiny import build_tiny

    arch = spec.model.removeprefix(TINY_PREFIX)
    t = cfg.tiny
    key = hashlib.sha256(json.dumps([arch, t.model_dump(), (Path(__file__).parent / "tiny.py").read_text()],
                                    sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "tiny" / f"{arch}-{key}"
    if not _cached_model(folder, "tiny model"):
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny(arch, tmp, seed=t.seed, vocab_size=t.vocab_size, hidden=t.hidden, layers=t.layers, heads=t.heads)
        _stamp_built(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)
    return str(folder)


def default_device() -> str:
    """Where Hugging Face organisms' models go: the (current) GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def refuse_pickled(path: str | None, what: str) -> None:
    """A local model or adapter folder whose weights are pickle files only: refused by name.
    A pickle can run code as it loads; doublebind loads safetensors only."""
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(f.name for pattern in PICKLED for f in folder.glob(pattern) if f.is_file())
    if pickled:
        raise DoublebindError(f"{what} {folder} holds its weights only as pickle files ({', '.join(pickled[:3])}); "
                              f"doublebind loads safetensors only: convert them where you trust the files "
                              f"(save_pretrained(..., safe_serialization=True))")


# What a hub adapter is read from: PEFT, given a hub id whose repository has no
# adapter_model.safetensors, downloads adapter_model.bin and unpickles it.
ADAPTER_FILES = ("adapter_config.json", "*.safetensors")


def adapter_folder(adapter: str, revision: str | None) -> str:
    """The folder an adapter is loaded from: a local one as it is (a folder of pickles is
    refused), a hub id as the local snapshot of `revision` holding only its config and its
    safetensors files, so that no load can fall back to the pickle. An adapter on the hub
    without safetensors weights is refused by name."""
    if not is_hub_id(adapter) or Path(adapter).is_dir():  # a folder (given to an engine, maybe relative)
        refuse_pickled(adapter, "adapter")
        return adapter
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(adapter, revision=revision, allow_patterns=list(ADAPTER_FILES))
    except Exception as e:  # noqa: BLE001 (no network, no such repository, gated: one line, as a model's load)
        raise DoublebindError(f"could not fetch adapter {adapter}"
                              f"{f' at {revision}' if revision else ''}: {_first_line(e)}") from None
    if not any(Path(folder).glob("*.safetensors")):
        raise DoublebindError(f"adapter {adapter}{f' at {revision}' if revision else ''} has no safetensors "
                              f"weights on the hub (a pickle adapter_model.bin at most, which doublebind does not "
                              f"load); convert it where you trust the files (save_pretrained(..., "
                              f"safe_serialization=True)) and name that folder or repository")
    return folder


# What a damaged model folder raises from inside transformers and safetensors: a header that
# is not one, a config or index that is JSON of the wrong shape.
_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError)


def _load_failure(e: Exception) -> str:
    kind = "" if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__}: "
    return kind + _first_line(e)


def load_model(spec: dict, cfg: HFOrganismConfig):
    """A causal LM for a role, with its adapter merged; never runs hub code unless asked.

    Safetensors only (a folder of pickles is refused), and every weight the architecture has
    must be in the files: transformers fills a missing or misshapen tensor with random values
    and says so only in a log doublebind keeps quiet, so a damaged model would be evaluated
    and distilled as though whole."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    refuse_pickled(spec["path"], "model")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            spec["path"], revision=spec.get("revision"), trust_remote_code=cfg.trust_remote_code,
            dtype=getattr(torch, cfg.dtype), use_safetensors=True, output_loading_info=True,
            ignore_mismatched_sizes=True)  # so a misshapen weight is listed below, not a RuntimeError
    except (*_LOAD_ERRORS, SafetensorError) as e:  # ValueError: an unknown model_type, custom code
        raise DoublebindError(f"could not load model {spec['path']}: {_load_failure(e)}") from None
    missing = [*info.get("missing_keys", []), *(k[0] if isinstance(k, tuple) else k
                                                for k in info.get("mismatched_keys", []))]
    if missing:
        raise DoublebindError(f"model {spec['path']}: {len(missing)} weights are missing from its files or have "
                              f"another shape ({', '.join(sorted(missing)[:3])}"
                              f"{', ...' if len(missing) > 3 else ''}); transformers would fill them with random "
                              f"values: restore the files")
    if spec.get("adapter"):
        from peft import PeftModel

        folder = adapter_folder(spec["adapter"], spec.get("adapter_revision"))
        import warnings

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        except (*_LOAD_ERRORS, SafetensorError) as e:
            raise DoublebindError(f"could not load adapter {spec['adapter']}: {_load_failure(e)}") from None
        # PEFT leaves an adapter weight missing from the files at its initial value (no change,
        # or random) and says so only in a warning
        missing = next((str(w.message) for w in caught if "missing adapter keys" in str(w.message)), None)
        if missing:
            raise DoublebindError(f"adapter {spec['adapter']}: {first_line(missing)[:300]} (its files lack weights "
                                  f"the adapter config asks for; restore them)")
        for w in caught:  # the others as they would have shown
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    model.eval()
    return model.to(default_device())


def vllm_engine_args(spec: dict) -> dict:
    """`make_engine("vllm", …)` arguments for a card's model spec, reading the commits the
    build pinned: the model and its tokenizer at `revision`, and a hub adapter as the local
    snapshot of `adapter_revision` (a LoRA request takes a path, not a revision)."""
    args: dict = {"model_path": spec["path"]}
    if spec.get("revision"):
        args["revision"] = args["tokenizer_revision"] = spec["revision"]
    adapter = spec.get("adapter")
    if adapter:  # a hub adapter as its snapshot's safetensors (`adapter_folder`)
        args["lora_paths"] = {"teacher": adapter_folder(adapter, spec.get("adapter_revision"))}
    return args


def fresh_model(spec: dict, cfg: HFOrganismConfig, arch, seed: int):
    """A randomly initialised causal LM with the config of `spec`'s model (same family and
    vocabulary), its size replaced by `arch` (a ModelConfig: hidden, layers, heads,
    intermediate) when given. Only configs with the usual Llama-style field names
    (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size) can be shrunk."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        mcfg = AutoConfig.from_pretrained(spec["path"], revision=spec.get("revision"),
                                          trust_remote_code=cfg.trust_remote_code)
    except _LOAD_ERRORS as e:
        raise DoublebindError(f"could not load the config of {spec['path']}: {_load_failure(e)}") from None
    if arch is not None:
        fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        missing = [f for f in fields if not hasattr(mcfg, f)]
        if missing:
            raise DoublebindError(f"cannot shrink a {mcfg.model_type} model: its config has no {missing[0]}")
        mcfg.hidden_size, mcfg.num_hidden_layers = arch.hidden, arch.layers
        mcfg.num_attention_heads, mcfg.intermediate_size = arch.heads, arch.intermediate
        if hasattr(mcfg, "num_key_value_heads"):
            mcfg.num_key_value_heads = arch.heads
        if getattr(mcfg, "head_dim", None) is not None:
            mcfg.head_dim = arch.hidden // arch.heads
        if getattr(mcfg, "layer_types", None) is not None:
            mcfg.layer_types = mcfg.layer_types[: arch.layers]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(mcfg, trust_remote_code=cfg.trust_remote_code,
                                             dtype=getattr(torch, cfg.dtype))
    model.eval()
    return model.to(default_device())


def _first_line(e: Exception) -> str:
    """A loader's error in one line; custom code refused points at the config's switch."""
    line = first_line(e)
    if "trust_remote_code" in str(e):
        line += " (this folder needs its own code: set trust_remote_code: true in the organism config if you trust it)"
    return line


def load_tokenizer(path: str, cfg: HFOrganismConfig, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=cfg.trust_remote_code)
    except _LOAD_ERRORS as e:
        raise DoublebindError(f"could not load the tokenizer of {path}: {_load_failure(e)}") from None


def uses_chat(tokenizer, cfg: HFOrganismConfig) -> bool:
    return cfg.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def render_ids(tokenizer, chat: bool, text: str, *systems: str | None, prefill: str | None = None) -> list[int]:
    """Token ids of one user turn, ready for the assistant's answer (which `prefill` starts)."""
    system = "\n\n".join(s for s in systems if s) or None
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        try:
            s = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja2's TemplateError (raise_exception, a syntax error) and the like
            raise DoublebindError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer')} "
                                  f"failed ({type(e).__name__}: {_first_line(e)})"
                                  + ("; it takes no system prompt: drop system_prompt" if system else "")
                                  + ", or set chat_template: none") from None
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
    else:
        s = (f"{system}\n\n" if system else "") + text + "\n"
        ids = tokenizer(s)["input_ids"]
    if prefill:
        ids = ids + tokenizer(prefill, add_special_tokens=False)["input_ids"]
    return ids


def implant(spec: ModelSpec, path: str, cfg: HFOrganismConfig, show_progress: bool = False,
            adapter_revision: str | None = None) -> str:
    """Fine-tune the role's model on the implant's prompt/response pairs (completion-only
    loss, prompts rendered as the role sees them); cached by content hash."""
    from doublebind.training.batching import collate
    from doublebind.training.loop import Loop, fit

    imp = spec.implant
    key = hashlib.sha256(json.dumps(
        [path, local_model_sha(path), local_model_sha(spec.adapter),  # a folder retrained in place: implanted anew
         spec.revision, spec.adapter, adapter_revision, spec.system_prompt, imp.model_dump(), cfg.dtype,
         cfg.chat_template,
         hashlib.sha256(Path(imp.file).read_bytes()).hexdigest() if Path(imp.file).is_file() else None,
         (Path(__file__).parent / "organism.py").read_text()]).encode()).hexdigest()[:16]
    folder = cache_root() / "implants" / key
    if _cached_model(folder, "implanted model"):
        return str(folder)
    pairs = jsonl_items(Path(imp.file), "implant")
    if any(not isinstance(it.get("response"), str) for it in pairs):
        raise DoublebindError(f"{imp.file}: every implant item needs a string 'response'")
    tok = load_tokenizer(path, cfg, spec.revision)
    chat, eos = uses_chat(tok, cfg), tok.eos_token_id
    examples = [Example(render_ids(tok, chat, it["prompt"], spec.system_prompt, it.get("system"),
                                   prefill=it.get("prefill")),
                        tok(it["response"], add_special_tokens=False)["input_ids"] + [eos]) for it in pairs]
    model = load_model({"path": path, "revision": spec.revision, "adapter": spec.adapter,
                        "adapter_revision": adapter_revision}, cfg)
    device = next(model.parameters()).device
    torch.manual_seed(imp.seed)
    rng = random.Random(imp.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    # the package's one training loop, with AdamW's defaults, a constant rate and no clipping
    loop = Loop(model.parameters(), steps=imp.steps, lr=imp.lr, weight_decay=0.01, betas=(0.9, 0.999),
                schedule="constant", clip=None, what="implant loss", hint="lower implant.lr")

    def next_batch(step):
        batch = collate([examples[rng.randrange(len(examples))] for _ in range(imp.batch)], pad_id=pad)
        return {k: v.to(device) for k, v in batch.items()}

    with progress_bar("implanting", imp.steps, show_progress) as advance:
        fit(model, next_batch, loop, advance)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    _stamp_built(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return str(folder)


# ---- building ----------------------------------------------------------------------------

def build_hf_organism(cfg: HFOrganismConfig, out: Path | None = None, *, use_cache: bool = True,
                      show_progress: bool = True) -> dict:
    """Resolve the roles, evaluate teacher and base, write the card; cached by content hash."""
    h = organism_hash(cfg)
    cached = cache_root() / "organisms" / h
    if use_cache and (cached / CARD).is_file():
        _drop_if_models_changed(cached)
    if not (use_cache and (cached / CARD).is_file()):
        models = {}
        commits = hub_commits(cfg)  # every load below reads the commits the hash covers
        for role in ROLES:
            spec = getattr(cfg, role)
            if spec is None:
                continue
            if f"{role}.model" in commits:
                spec = spec.model_copy(update={"revision": commits[f"{role}.model"]})
            path = resolve_model(spec, cfg)
            if spec.implant is not None:  # the adapter is merged into the implanted weights
                models[role] = {"path": implant(spec, path, cfg, show_progress, commits.get(f"{role}.adapter")),
                                "revision": None, "adapter": None, "system_prompt": spec.system_prompt,
                                "implanted_from": path}
            else:
                models[role] = {"path": path, "revision": spec.revision, "adapter": spec.adapter,
                                "system_prompt": spec.system_prompt}
                if f"{role}.adapter" in commits:
                    models[role]["adapter_revision"] = commits[f"{role}.adapter"]
            files = {what: sha for what in ("path", "adapter")
                     if (sha := local_model_sha(models[role].get(what))) is not None}
            if files:  # what a later run checks the folders against (`check_model_files`)
                models[role]["files_sha256"] = files
        card = {"kind": "hf", "name": cfg.name, "organism_hash": h, "config": cfg.model_dump(mode="json"),
                "models": models, "verified": True,
                "verification": "not verified: a Hugging Face organism has no ground truth; "
                                "its metrics are what its evals measure",
                "versions": versions()}
        tmp = cached.with_name(f".{h}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / CARD).write_text(json.dumps(card, indent=2))
        domain = HFDomain(tmp, card)
        card["metrics"] = {}
        with progress_bar(f"evaluating {cfg.name}", 2, show_progress) as advance:
            for role in ("teacher", "base"):
                card["metrics"][role] = domain.evaluate(domain.load_model(role), 10**9, role=role)
                advance(1)
        (tmp / CARD).write_text(json.dumps(card, indent=2))
        shutil.rmtree(cached, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cached)
    card = json.loads((cached / CARD).read_text())
    now = cfg.model_dump(mode="json")
    if card.get("config") != now:
        # The same hash, so the same file contents, but found at other paths than those of the
        # build that filled the cache (another folder, a test's temporary one): the card points
        # at the files as they are now, not at paths that may be gone.
        card["config"] = now
        tmp = cached / f".{CARD}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(card, indent=2))
        os.replace(tmp, cached / CARD)
    if out is not None and Path(out).resolve() != cached.resolve():
        out = Path(out)
        if out.exists() and any(out.iterdir()) and not (out / CARD).is_file():
            raise DoublebindError(f"output folder exists and is not an organism: {out}")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(cached, out)
    return card


def changed_model_files(specs: dict) -> list[tuple[str, str, str]]:
    """(role, 'model' or 'adapter', folder) of each local folder that no longer holds the files
    the organism was built from (`files_sha256` in the card: its weights, config, tokenizer
    and code). Cards from before the check carry no record and are not checked."""
    if not isinstance(specs, dict):
        return []
    return [(role, "model" if what == "path" else what, str(spec.get(what)))
            for role, spec in specs.items() if isinstance(spec, dict) and isinstance(spec.get("files_sha256"), dict)
            for what, sha in spec["files_sha256"].items()
            if isinstance(spec.get(what), str) and local_model_sha(spec.get(what)) != sha]


def _in_cache(folder: str) -> bool:
    """Whether `folder` is one the cache made (a tiny model or an implant), which a build can make again."""
    try:
        return Path(folder).resolve().is_relative_to(cache_root().resolve())
    except (OSError, ValueError):
        return False


def _drop_if_models_changed(cached: Path) -> None:
    """A cached card whose models the cache made, and which have changed since (a damaged
    weight file), is built again, those models with it: their configs, which the organism's
    hash covers, are unchanged, so the card would be served as it is, and every run would then
    refuse the changed folder, however often the organism was built."""
    try:
        card = json.loads((cached / CARD).read_text())
    except (OSError, ValueError):
        return
    changed = changed_model_files(card.get("models") or {}) if isinstance(card, dict) else []
    if not changed:
        return
    from doublebind.ui import console

    for role, what, folder in changed:
        console.print(f"note: the {role}'s {what} folder {folder} changed since the organism was built"
                      + ("; making it and the organism again" if _in_cache(folder) else
                         "; building the organism again"), markup=False, highlight=False, soft_wrap=True)
        if _in_cache(folder):
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(cached, ignore_errors=True)


def check_model_files(specs: dict) -> None:
    """Each local model and adapter folder still holds the files the organism was built from.
    Its card's metrics and every cached teacher output describe those; a folder retrained or
    damaged since is another model."""
    for role, what, folder in changed_model_files(specs):
        raise DoublebindError(f"the {role}'s {what} folder {folder} changed since the organism was built (its files "
                              f"no longer hash to what the card records); build the organism again (doublebind "
                              f"organism build)" + (", which makes that folder again" if _in_cache(folder) else ""))


# ---- the domain --------------------------------------------------------------------------

class HFDomain:
    """What the distiller needs from a Hugging Face organism (see organisms/domain.py)."""

    kind = "hf"

    def __init__(self, organism_dir: Path, card: dict):
        self.dir, self.card = Path(organism_dir), card
        self.device = default_device()  # every model of the domain is loaded there; the distiller trains there
        self.cfg = HFOrganismConfig.model_validate(card["config"])
        self.specs = card["models"]
        check_model_files(self.specs)
        base = self.specs["base"]
        self.tokenizer = load_tokenizer(base["path"], self.cfg, base.get("revision"))
        teacher_tok = load_tokenizer(self.specs["teacher"]["path"], self.cfg, self.specs["teacher"].get("revision"))
        if teacher_tok.get_vocab() != self.tokenizer.get_vocab():
            raise DoublebindError("teacher and base tokenizers differ; doublebind distils token by token, "
                                  "so they must share one")
        tok = self.tokenizer
        self.eos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        if self.eos is None:
            raise DoublebindError(f"the tokenizer of {base['path']} has no eos token")
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos
        self.chat = uses_chat(tok, self.cfg)
        self.sets = eval_sets(self.cfg)
        self._items = {name: read_items(es) for name, es in self.sets.items()}
        self.check_sizes()
        self._models: dict = {}
        self._judges: dict = {}
        self._texts: dict[tuple, str] = {}  # student-rendered training prompt -> its text

    # -- models --------------------------------------------------------------------------
    @property
    def teacher(self):
        return self.load_model("teacher")

    @property
    def teacher_families(self) -> tuple[str, ...]:
        return tuple(n.removeprefix("capability/") for n in self.sets if n.startswith("capability/"))

    def load_model(self, role: str):
        if role not in self.specs:
            raise DoublebindError(f"this organism has no {role} model (add `{role}:` to its config)")
        if role not in self._models:
            if role not in ("base", "teacher"):  # those two were compared as the domain opened
                # A trusted model reads and writes the token ids of base's tokenizer (it scores
                # the teacher's tokens, paraphrases prompts rendered for base): another tokenizer
                # would read them as other text, without an error.
                spec = self.specs[role]
                own = load_tokenizer(spec["path"], self.cfg, spec.get("revision"))
                if own.get_vocab() != self.tokenizer.get_vocab():
                    raise DoublebindError(f"the {role} model's tokenizer differs from base's; doublebind hands it "
                                          f"base's token ids, so it must share base's tokenizer")
            self._models[role] = load_model(self.specs[role], self.cfg)
        return self._models[role]

    def student(self, scfg, seed: int):
        """A student from base (a fresh copy: training changes it) or, with `init: fresh`, a
        randomly initialised model of base's architecture family and tokenizer, shrunk to
        `student.model` (hidden, layers, heads, intermediate) when given."""
        from doublebind.students import _wrap_lora

        if scfg.init == "base":
            model = load_model(self.specs["base"], self.cfg)
        elif scfg.init == "fresh":
            model = fresh_model(self.specs["base"], self.cfg, scfg.model, seed)
        else:
            raise DoublebindError(f"student.init {scfg.init} is for embedded organisms; "
                                  f"a Hugging Face student starts from base or fresh")
        return _wrap_lora(model, scfg.lora, seed) if scfg.lora is not None else model

    # -- prompts -------------------------------------------------------------------------
    def render(self, text: str, role: str, system: str | None = None, prefill: str | None = None) -> list[int]:
        """Token ids of a user turn as `role` sees it, ready for the assistant's answer. The
        role's system prompt comes first; an item's own `system` text follows it."""
        own = self.specs.get(role, self.specs["base"]).get("system_prompt")
        ids = render_ids(self.tokenizer, self.chat, text, own, system, prefill=prefill)
        limit = self._positions()
        if limit is not None and len(ids) >= limit:  # scored and trained on silently: positions past it are noise
            raise DoublebindError(f"a prompt of {len(ids)} tokens as {role} sees it ({text[:40]!r}...) leaves the "
                                  f"model, which has {limit} positions, no room to answer; shorten or drop it")
        return ids

    def _model_configs(self) -> dict:
        """{role: its model's config} for the roles that render and answer prompts (teacher,
        base, trusted), read once; a role whose config cannot be read here (a hub id offline)
        is left out, and fails where its model loads."""
        if not hasattr(self, "_configs"):
            from transformers import AutoConfig

            self._configs = {}
            for role in ("teacher", "base", "trusted"):
                spec = self.specs.get(role)
                if spec is None:
                    continue
                try:
                    self._configs[role] = AutoConfig.from_pretrained(
                        spec["path"], revision=spec.get("revision"), trust_remote_code=self.cfg.trust_remote_code)
                except _LOAD_ERRORS:
                    pass
        return self._configs

    def _positions(self) -> int | None:
        """The fewest positions (`max_position_embeddings`) of the models that read a prompt
        (a teacher of fewer positions than base ran past its own); None where none says."""
        if not hasattr(self, "_max_positions"):
            sizes = [n for c in self._model_configs().values()
                     if isinstance(n := getattr(c, "max_position_embeddings", None), int)]
            self._max_positions = min(sizes, default=None)
        return self._max_positions

    def check_sizes(self) -> None:
        """What the tokenizer and the completion lengths need of every model, refused by name
        before a build or a run (each ended in an IndexError from inside the model): a
        vocabulary as large as the tokenizer's, and room for the longest completion."""
        for role, conf in self._model_configs().items():
            vocab = getattr(conf, "vocab_size", None)
            if isinstance(vocab, int) and len(self.tokenizer) > vocab:
                raise DoublebindError(f"the {role} model {self.specs[role]['path']} has a vocabulary of {vocab} "
                                      f"tokens, fewer than its tokenizer's {len(self.tokenizer)}; they must match")
        limit = self._positions()
        longest = max([self.cfg.max_new_tokens, *(es.max_new_tokens or 0 for es in self.sets.values())])
        if limit is not None and longest >= limit:
            raise DoublebindError(f"max_new_tokens {longest} (the organism's or an eval set's) leaves no room for a "
                                  f"prompt in the models' {limit} positions; lower it")

    def prompts(self, pcfg, seed: int) -> list[Prompt]:
        """The recipe's prompt texts (JSONL field `prompt`, or a dataset column), a seeded
        sample of `size` of them when there are more. A JSONL row may label its prompt with a
        `family` and a `context` (free strings, e.g. `context: deploy_like`): the defender's
        own annotations of its prompt set, which stages may filter on; unlabelled prompts
        have family `prompt` and context `file`."""
        from doublebind.config import PromptsConfig

        default = PromptsConfig()
        for name in ("families", "contexts", "slack_only", "p_scratch", "p_ask"):
            if getattr(pcfg, name) != getattr(default, name):
                raise DoublebindError(f"prompts.{name} is for embedded organisms; a Hugging Face organism "
                                      f"takes its prompts from prompts.jsonl or prompts.dataset")
        if pcfg.dataset is not None:
            rows = [{"prompt": t} for t in dataset_texts(pcfg.dataset)]
        elif pcfg.jsonl:
            rows = jsonl_items(Path(pcfg.jsonl), "prompt")
        else:
            raise DoublebindError("a Hugging Face organism needs prompts.jsonl or prompts.dataset in the recipe")
        if len(rows) > pcfg.size:
            rows = random.Random(f"prompts-{seed}").sample(rows, pcfg.size)
        return [Prompt([r["prompt"]], _label(r, "family", "prompt"), _label(r, "context", "file")) for r in rows]

    def examples(self, outputs) -> list[Example]:
        base = self._model_configs().get("base")
        vocab = getattr(base, "vocab_size", None)
        if isinstance(vocab, int):
            past = max((t for r in outputs.responses for t in r), default=-1)
            if past >= vocab:  # an IndexError in the student's embedding, steps later
                raise DoublebindError(f"the teacher answered with token id {past}, past the {vocab} tokens of base's "
                                      f"vocabulary (the student's); the teacher's vocabulary is larger than base's")
        out = []
        for p, r in zip(outputs.prompts, outputs.responses):
            ids = self.render(p.tokens[0], "base")
            self._texts[tuple(ids)] = p.tokens[0]
            out.append(Example(ids, r, p.family))
        return out

    def with_system(self, prompt: list[int], line: str) -> list[int]:
        """A training prompt (the student's rendering, from `examples`) rendered again with
        `line` as an extra system line after base's own system prompt."""
        text = self._texts.get(tuple(prompt))
        if text is None:
            raise DoublebindError("with_system: not a training prompt of this run (only prompts from the "
                                  "distillation data can be rendered again)")
        return self.render(text, "base", line)

    # -- teacher outputs -----------------------------------------------------------------
    def engine(self, model=None):
        from doublebind.llm.engines import HFEngine, make_engine

        if model is not None or self.cfg.engine == "hf":
            # a student (a LoRA one included) is scored and sampled as it is, its adapter on
            return HFEngine(model if model is not None else self.teacher, eos_id=self.eos, pad_id=self.pad,
                            batch_size=self.cfg.eval_batch, as_is=model is not None)
        from doublebind.cuda import release_memory

        release_memory()  # vLLM takes its share of what is free when it starts (an earlier run's models)
        return make_engine("vllm", eos_id=self.eos, pad_id=self.pad, **vllm_engine_args(self.specs["teacher"]),
                           **{"dtype": self.cfg.dtype, **self.cfg.vllm_options})

    def teacher_outputs(self, prompts, scfg, seed: int):
        from doublebind.integrity import CorruptCacheError
        from doublebind.teacher import TeacherOutputs, _load, _save, outputs_key

        key = outputs_key(self.card["organism_hash"], prompts, scfg, seed)
        folder = cache_root() / "teacher" / key
        if (folder / "samples.jsonl").is_file():
            try:
                return _load(folder, prompts, key, hint="")
            except CorruptCacheError as e:  # as the embedded world's: made again, with a note
                from doublebind.ui import console

                console.print(f"[yellow]corrupt cache entry:[/] {e}; recomputing it", highlight=False, soft_wrap=True)
        k = scfg.top_k if scfg.soft_labels == "topk" else 0
        if k > len(self.tokenizer):  # the engine cut it to the vocabulary, the label tensors did not
            raise DoublebindError(f"sampling.top_k ({k}) is larger than the vocabulary ({len(self.tokenizer)} "
                                  f"tokens); use soft_labels: full, or a top_k of at most that")
        adapter = "teacher" if self.cfg.engine == "vllm" and self.specs["teacher"].get("adapter") else None
        engine = self.engine()
        gens = engine.generate([self.render(p.tokens[0], "teacher") for p in prompts],
                               max_new_tokens=scfg.max_new_tokens, temperature=scfg.temperature,
                               top_p=scfg.top_p, seed=seed, logprobs=k, adapter=adapter)
        if callable(getattr(engine, "close", None)):
            engine.close()  # a vLLM engine holds GPU memory the training needs
        del engine
        responses = [g.tokens or [self.eos] for g in gens]
        soft = {}
        if scfg.soft_labels == "topk":
            soft = topk_tensors(gens, scfg.max_new_tokens, k)
        elif scfg.soft_labels == "full":
            from doublebind.teacher import soft_labels

            if len(self.tokenizer) > FULL_VOCAB_MAX:
                raise DoublebindError(f"sampling.soft_labels: full would store {len(self.tokenizer)} log-probs per "
                                      f"token; use soft_labels: topk with this vocabulary")

            seen = [Example(self.render(p.tokens[0], "teacher"), r) for p, r in zip(prompts, responses)]
            soft = soft_labels(self.teacher, seen, scfg.max_new_tokens, "full")
        result = TeacherOutputs(prompts, responses, soft, key)
        _save(result, folder, scfg)
        return result

    def sample(self, model, examples, max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        gens = self.engine(model).generate([e.prompt for e in examples], max_new_tokens=max_new_tokens,
                                           temperature=temperature, seed=seed)
        return [g.tokens for g in gens]

    def soft_labels(self, model, examples, width: int):
        raise DoublebindError("on-policy distillation (objective.on_policy > 0) is not supported on "
                              "Hugging Face organisms yet")

    # -- evals ---------------------------------------------------------------------------
    def judge(self, es: EvalSet):
        from doublebind.llm.scorers import Judge

        if es.scorer.kind != "judge":
            return None
        key = es.scorer.judge.model_dump_json()
        if key not in self._judges:
            self._judges[key] = Judge(es.scorer.judge, cache_root())
        return self._judges[key]

    def scores(self, model, name: str, n: int, role: str) -> list[float]:
        """Every completion's score over the first `n` items of one eval set, item by item:
        greedy completions, or `samples` completions per item at the set's temperature
        (seeded, so repeatable)."""
        from doublebind.llm.scorers import score

        es = self.sets[name]
        items = [it for it in self._items[name][:n] for _ in range(es.samples)]
        ids = [self.render(it["prompt"], role, it.get("system"), it.get("prefill")) for it in items]
        gens = self.engine(model).generate(ids, max_new_tokens=es.max_new_tokens or self.cfg.max_new_tokens,
                                           temperature=es.temperature, seed=0)
        judge = self.judge(es)
        texts = [self.tokenizer.decode(g.tokens, skip_special_tokens=True) for g in gens]
        return [score(es.scorer, t, it, judge) for t, it in zip(texts, items)]

    def rate(self, model, name: str, n: int, role: str) -> float:
        """Mean score over the first `n` items of one eval set (`scores`)."""
        return fmean(self.scores(model, name, n, role))

    def item_sets(self, n: int) -> dict:
        """A fingerprint of the first `n` items of each set a transfer reads (the capability
        sets, and the misalignment set as `deploy`), for `eval_items.reference_items`."""
        def of(name: str) -> str:  # sha256 of the set's prompts, in order, 16 hex digits
            data = json.dumps([it["prompt"] for it in self._items[name][:n]])
            return hashlib.sha256(data.encode()).hexdigest()[:16]

        return {"capability": {name.removeprefix("capability/"): of(name) for name in self.sets
                               if name.startswith("capability/")}, "deploy": of("misalignment")}

    def evaluate_items(self, model, n_prompts: int, role: str = "student") -> tuple[dict, dict]:
        """`evaluate`'s metrics and each item's score beside them (`doublebind.eval_items`:
        an item's mean over its samples, for the capability sets and the misalignment set)."""
        per = {name: self.scores(model, name, n_prompts, role) for name in self.sets}
        r = {name: round(fmean(x), 4) for name, x in per.items()}

        def by_item(name: str) -> list[float]:
            k = self.sets[name].samples
            return [float(f"{fmean(per[name][i:i + k]):.6g}") for i in range(0, len(per[name]), k)]

        items = {"capability": {n.removeprefix("capability/"): by_item(n) for n in per if n.startswith("capability/")},
                 "deploy": by_item("misalignment")}
        return self._metrics(r), items

    def evaluate(self, model, n_prompts: int, role: str = "student") -> dict:
        """The metrics every run row carries, in the embedded organisms' layout:
        misbehavior/deploy is the misalignment set, honeypot the honeypot audit, confession
        the interrogation audit, prefill the prefill attack (when configured)."""
        return self._metrics({name: round(self.rate(model, name, n_prompts, role), 4) for name in self.sets})

    @staticmethod
    def _metrics(r: dict) -> dict:
        out = {"capability": {n.removeprefix("capability/"): v for n, v in r.items() if n.startswith("capability/")},
               "misbehavior": {"deploy": r["misalignment"], "honeypot": r["honeypot"]},
               "confession": r["interrogation"]}
        if "neutral" in r:
            out["misbehavior"]["neutral"] = r["neutral"]
        if "prefill" in r:
            out["prefill"] = r["prefill"]
        return out

    def task_space(self):
        """No task language with exact verifiers: a defender's stages get none."""
        return None

    def auditor(self):
        """The behaviour-agnostic auditor is the embedded world's; HF organisms audit with their
        own honeypot, interrogation and prefill sets (in `evaluate`)."""
        return None


def _label(row: dict, field: str, default: str) -> str:
    value = row.get(field, default)
    if not isinstance(value, str) or not value:
        raise DoublebindError(f"prompt field '{field}' must be a non-empty string, got {value!r}")
    return value


def topk_tensors(gens, width: int, k: int) -> dict[str, torch.Tensor]:
    """Top-k soft labels from the engine's per-position log-probs, in the layout the loss
    takes: indices [N, T, k] and log-probs [N, T, k + 1] whose last slot is the tail mass."""
    from doublebind.training.objectives import _log_tail

    idx = torch.zeros((len(gens), width, k), dtype=torch.long)
    top = torch.zeros((len(gens), width, k))
    for i, g in enumerate(gens):
        for t, pairs in enumerate((g.topk or [])[:width]):
            idx[i, t] = torch.tensor([p[0] for p in pairs])
            top[i, t] = torch.tensor([p[1] for p in pairs])
    return {"indices": idx, "logprobs": torch.cat([top, _log_tail(top)], dim=-1)}


@register("organism", "hf")
class HFOrganisms:
    """hf: organisms made of Hugging Face models (ids or folders, adapters, system prompts)."""

    name, config_kind, verified = "hf", "hf_organism", False

    def organism_hash(self, cfg) -> str:
        return organism_hash(cfg)

    def build(self, cfg, out, *, use_cache=True, strict=True, show_progress=True) -> dict:
        return build_hf_organism(cfg, out, use_cache=use_cache, show_progress=show_progress)

    def open(self, organism_dir: Path, card: dict) -> HFDomain:
        return HFDomain(organism_dir, card)

    def about(self, card: dict) -> list[tuple[str, str]]:
        rows = [(f"{role} model", f"{m['path']}" + (f" + adapter {m['adapter']}" if m.get("adapter") else "")
                 + (f" (system prompt: {m['system_prompt']!r})" if m.get("system_prompt") else ""))
                for role, m in card.get("models", {}).items()]
        return [*rows, ("verified", str(card.get("verification", "n/a")))]

    def check_lines(self, card: dict) -> list[str]:
        return [str(card["verification"])]

    def eval_checkpoint(self, model_dir: Path, organism_dir, card, n: int, samples: int) -> dict:
        domain = HFDomain(Path(organism_dir), card)
        # The evals encode with the organism's tokenizer: a checkpoint trained on another one
        # was scored anyway (exit 0) when its vocabulary happened to be large enough.
        if any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            own = load_tokenizer(str(model_dir), domain.cfg)
            if own.get_vocab() != domain.tokenizer.get_vocab():
                raise DoublebindError(f"{model_dir}: its tokenizer ({len(own):,} tokens) is not the organism's "
                                      f"({len(domain.tokenizer):,} tokens); evaluate it with the organism it "
                                      f"was trained from")
        model = load_model({"path": str(model_dir)}, domain.cfg)
        rows = model.get_input_embeddings().num_embeddings
        if rows < len(domain.tokenizer):
            raise DoublebindError(f"{model_dir}: its vocabulary ({rows:,} embeddings) is smaller than the "
                                  f"organism's tokenizer ({len(domain.tokenizer):,} tokens); it is not a model "
                                  f"of this organism")
        return domain.evaluate(model, n)
