"""Checks on output folders, made before any work starts.

    check_out_dir(path, "--out", what="a run")
    check_not_inside(path)        the command line's --out, not where another output keeps its own
    check_cache_root()            and puts back builds a killed `organism build --no-cache` set aside

An output path that is a file, that lies inside a file, or whose nearest existing folder
cannot be written to is refused at once with one line, not after minutes of training; so is
a folder that holds another kind of output (a study's files, a run's or an organism's: the
new output would overwrite some of them and leave a mix), and a cache ($DOUBLEBIND_CACHE)
that cannot hold what a build or a run stores there. (Here and not in `cards.py`: the build
code reaches that module, and what it imports is hashed into every organism's hash.)
"""

from __future__ import annotations

import os
from pathlib import Path

from doublebind.errors import DoublebindError


# The files by which each kind of output folder is known: a study (`study run`), a
# distillation run (`distill`, which writes prompts.jsonl before it trains), an organism, one
# of its models or a run's checkpoints (`model.safetensors`), and a replication (`replicate`).
KINDS = {"a study": ("study.json", "results.jsonl"), "a run": ("metrics.jsonl", "prompts.jsonl"),
         "an organism": ("organism.json",), "a model": ("model.safetensors",),
         "a replication": ("subliminal_digits.json",)}


def check_not_inside(path: Path, flag: str = "--out") -> None:
    """Refuse an `--out` the user names where another output keeps its own folders: a study's
    `runs/` and `organisms/`, a run's `checkpoints/`, and inside a model folder (an
    organism's model or a checkpoint). Writing there mixed two outputs, and `distill --force`
    replaced a study's record of one of its runs. For the command line's `--out` only: a
    study writes its own runs inside itself. The path is resolved (`..`, symlinks), and only
    those places are refused, so a study folder may sit anywhere else, a study inside another
    study's folder included (`docs/results/matrix`). A path that is a file is left to
    `check_out_dir`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return
    resolved = path.resolve()
    for above in resolved.parents:
        first = resolved.relative_to(above).parts[0]
        if (above / "model.safetensors").is_file() and any((above / f).is_file() for f in ("config.json", "meta.json")):
            held = ("a model", above / "model.safetensors")
        elif first in ("runs", "organisms") and (above / "study.json").is_file():
            held = ("a study", above / "study.json")
        elif first == "checkpoints" and (above / "metrics.jsonl").is_file():
            held = ("a run", above / "metrics.jsonl")
        else:
            continue
        raise DoublebindError(f"{flag} {path} lies inside {held[0]} ({held[1]}), whose files are its own; "
                              f"choose a folder outside it")


def check_out_dir(path: Path, flag: str = "--out", *, what: str = "an output") -> None:
    """Raise a one-line `DoublebindError` unless `path` is a folder or can be made one, and,
    when `what` is one of `KINDS`, holds no other kind's files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DoublebindError(f"{flag} {path} is a file, not {what} folder")
    others = {kind: names for kind, names in KINDS.items() if kind != what} if what in KINDS else {}
    for kind, names in others.items():
        found = next((n for n in names if (path / n).exists()), None)
        if found:
            raise DoublebindError(f"{flag} {path} holds {kind} ({found}), not {what}; choose another {flag}")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DoublebindError(f"{flag} {path}: {parent} is a file, so no folder can be made inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DoublebindError(f"{flag} {path}: cannot write to {parent} (permission denied)")


# The cache's folders: built organisms, teacher outputs, tiny Hugging Face models and implants.
CACHE_FOLDERS = ("organisms", "teacher", "tiny", "implants")


def check_cache_root() -> Path:
    """The cache root (`cards.cache_root()`), refused with one line naming $DOUBLEBIND_CACHE
    when builds and teacher outputs could not be stored there (a file, or not writable)."""
    from doublebind.cards import cache_root

    root = cache_root()
    named = "DOUBLEBIND_CACHE" if os.environ.get("DOUBLEBIND_CACHE") else "the cache (default; set DOUBLEBIND_CACHE)"
    try:
        check_out_dir(root, named, what="a cache")
    except DoublebindError as e:
        raise DoublebindError(f"{e}; builds and teacher outputs are stored there") from None
    for name in CACHE_FOLDERS:  # a file where one of its folders goes would fail a build at its end
        if (root / name).exists() and not (root / name).is_dir():
            raise DoublebindError(f"{named}: {root / name} is a file, where the cache keeps its {name} folder; "
                                  f"move or delete it")
    for entry in restore_set_aside_builds(root / "organisms"):
        from doublebind.ui import console

        console.print(f"note: put back the cached build {entry}, set aside by an `organism build --no-cache` "
                      f"that was killed", highlight=False, soft_wrap=True, markup=False)
    return root


def set_aside_build(entry: Path) -> Path | None:
    """Rename a cache entry to a hidden name beside it (`.<hash>.old<pid>`, never looked up),
    so that a build misses the cache; None if absent. Whoever sets it aside puts it back if the
    new build never gets there; `restore_set_aside_builds` does where that process died."""
    import shutil

    if not entry.exists():
        return None
    aside = entry.with_name(f".{entry.name}.old{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(entry, aside)
    return aside


def restore_set_aside_builds(organisms: Path) -> list[Path]:
    """Put back the cached builds that an `organism build --no-cache` killed mid-build left set
    aside (`set_aside_build`, its process gone): the build comes back on any other ending.
    Where a new build of that hash has since been stored, the old copy is deleted. Another
    process's, still running, is never touched. Returns the entries put back."""
    import shutil

    from doublebind.studies.executor import pid_alive

    restored = []
    if not organisms.is_dir():
        return restored
    for aside in sorted(organisms.glob(".*.old*")):
        name, _, pid = aside.name[1:].rpartition(".old")
        if not (name and pid.isdigit()) or pid_alive(int(pid)):
            continue
        entry = organisms / name
        if entry.exists():
            shutil.rmtree(aside, ignore_errors=True)
            continue
        try:
            os.replace(aside, entry)
        except OSError:  # another command put it back first
            continue
        restored.append(entry)
    return restored
