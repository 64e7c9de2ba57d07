"""Checksums of cached files, with stamps so that big files are not rehashed on every use.

`verify_file(path, expected)` hashes `path` (sha256) and compares it with `expected`. The
result of a good check is kept in a small JSON stamp beside the file (`.sha256-stamps.json`
in the same folder: size, mtime_ns, ctime_ns and sha256 per file name); while a file's size
and times still match its stamp, the stamped hash is trusted instead of reading the file
again. Any write to the file changes its mtime and ctime (ctime cannot be set back from user
space), so a scrambled or truncated file is rehashed and caught. A file changed less than
`RACY_NS` ago is not stamped (a later write within the same timestamp tick could otherwise
leave size and times unchanged), and a stamp that cannot be written (read-only folder) only
costs a rehash next time.

This module is deliberately outside the sources that make up an organism's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from doublebind.atomic import write_json
from doublebind.errors import DoublebindError

STAMPS = ".sha256-stamps.json"
RACY_NS = 2_000_000_000  # coarser than any filesystem's timestamp granularity (FAT: 2 s)
_CHUNK = 1 << 20


class CorruptCacheError(DoublebindError):
    """A cached file does not match the hash recorded when it was written."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _read_stamps(store: Path) -> dict:
    try:
        data = json.loads(Path(store).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(store: Path, key: str, entry: dict) -> None:
    stamps = _read_stamps(store)
    stamps[key] = entry
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_json(store, stamps, indent=1, sort_keys=True)
    except OSError:  # a read-only cache: verify by hashing every time
        pass


def current_sha256(path: Path, store: Path | None = None) -> str:
    """sha256 of `path`, from its stamp when the file is unchanged since it was stamped.
    Stamps live beside the file (`STAMPS`, keyed by name), or in `store`, keyed by the
    resolved path, for folders doublebind should not write into (a user's model folder)."""
    path = Path(path)
    store, key = (path.parent / STAMPS, path.name) if store is None else (Path(store), str(path.resolve()))
    st = path.stat()
    entry = _read_stamps(store).get(key)
    if isinstance(entry, dict) and {k: entry.get(k) for k in ("size", "mtime_ns", "ctime_ns")} == _stat_key(st) \
            and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = file_sha256(path)
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS
    if settled and _stat_key(path.stat()) == _stat_key(st):  # not written while we read it
        _write_stamp(store, key, {**_stat_key(st), "sha256": sha})
    return sha


def verify_file(path: Path, expected: str, what: str) -> None:
    """Raise `CorruptCacheError` naming `what` unless `path` exists and hashes to `expected`."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCacheError(f"{what}: {path} is missing")
    found = current_sha256(path)
    if found != expected:
        raise CorruptCacheError(f"{what}: {path} is corrupt (sha256 {found[:12]}…, "
                                f"expected {expected[:12]}… from when it was written)")


def verify_organism_models(folder: Path, card: dict, only: Path | None = None) -> None:
    """Check every model file the card hashes (an embedded-world organism's checkpoints), or,
    with `only`, the one in that model folder (none when `only` is not one of them)."""
    folder = Path(folder)
    models = card.get("models")
    if not isinstance(models, dict):
        return
    if not isinstance(card.get("config"), dict):  # every kind opens its models from it
        raise CorruptCacheError(f"organism '{card.get('name', '?')}': its card has no config")
    world = card.get("kind", "world") != "hf"  # world, denier, recued: models in the folder (`organisms.kinds`)
    for role, m in models.items():
        what = f"organism '{card.get('name', '?')}' model '{role}'"
        if not isinstance(m, dict) or not m.get("safetensors_sha256"):
            if world:  # an embedded-world model is a folder of the organism, hashed by its card
                raise CorruptCacheError(f"{what}: the card holds no hash of its weights (safetensors_sha256)")
            continue  # a Hugging Face organism's models live outside the folder
        if not isinstance(m["safetensors_sha256"], str):
            raise CorruptCacheError(f"{what}: the card's hash of its weights (safetensors_sha256) is not a string")
        model_dir = folder / str(m.get("path", role))
        if only is not None and model_dir.resolve() != Path(only).resolve():
            continue
        verify_file(model_dir / "model.safetensors", m["safetensors_sha256"], what)
        if world and not (model_dir / "config.json").is_file():  # every loader opens it; a cache hit without it
            raise CorruptCacheError(f"{what}: {model_dir / 'config.json'} is missing")  # was verified, then unusable
        # The card hashes the weights only; the folder's JSON files (config, meta, tokenizer)
        # must at least parse, or a loader (transformers' included) fails on them later.
        for f in sorted(model_dir.glob("*.json")):
            if f.name.startswith(".") or not f.is_file():
                continue
            try:
                json.loads(f.read_text())
            except (OSError, ValueError) as e:
                raise CorruptCacheError(f"{what}: {f} is not valid JSON ({str(e).splitlines()[0]})") from None


def check_checkpoint_weights(folder: Path, structure: bool = True) -> None:
    """Refuse a model folder whose safetensors weights hold a non-finite value, and, with
    `structure` (an embedded-world checkpoint, saved and loaded under the same names), lack a
    tensor that the model its config describes has, or hold one of another shape. Scored as
    it was, a checkpoint of NaN weights read 0.000 on every metric (exit 0), one missing its
    layers was scored with those layers started at random by transformers, which says so in
    a log line only, and a shape that disagreed with the config was an error that pointed at
    a report nobody saw. Not `structure` on a Hugging Face checkpoint: its loader renames
    tensors as it loads (a mixture of experts' fused experts, files saved without the
    model's prefix), which a comparison of names would call missing. Every tensor is read
    once, on the CPU (tens of seconds for a 7B model). A folder this cannot read is left to
    the loader, whose error names it."""
    import torch
    from safetensors import safe_open

    folder = Path(folder)
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as weights:
                for key in weights.keys():
                    t = weights.get_tensor(key)
                    shapes[key] = tuple(t.shape)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        bad = int((~torch.isfinite(t)).sum())
                        raise DoublebindError(f"{f}: tensor {key} holds {bad:,} non-finite value(s) of {t.numel():,} "
                                              f"(a damaged or diverged checkpoint)")
        except DoublebindError:
            raise
        except Exception:  # noqa: BLE001 (a damaged file: the loader's own error names it)
            return
    expected = _config_tensors(folder) if shapes and structure else None
    if not expected:
        return
    missing = sorted(group[0] for group, _ in expected if not any(n in shapes for n in group))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DoublebindError(f"{folder}: its weights lack {len(missing)} tensor(s) that its config's model has "
                              f"({shown}); loaded, they would start at random")
    for group, shape in expected:
        for name in group:
            if name in shapes and shapes[name] != shape:
                raise DoublebindError(f"{folder}: tensor {name} has shape {list(shapes[name])} in its weights and "
                                      f"{list(shape)} in the model its config.json describes (a config and weights "
                                      f"of two models?)")


def _config_tensors(folder: Path) -> list[tuple[list[str], tuple[int, ...]]]:
    """The tensors of the model `folder`'s config.json describes, built on the meta device (no
    memory, no weights): (the names one tensor goes by, a tied pair such as embeddings and
    head counting once, its shape). Empty where the config cannot be read or built here (a
    model whose code is its own), which the loader then judges."""
    import torch

    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)  # never its own code, nor a prompt
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception:  # noqa: BLE001
        return []
    groups: dict[int, tuple[list[str], tuple[int, ...]]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), ([], tuple(t.shape)))[0].append(name)
    return list(groups.values())
