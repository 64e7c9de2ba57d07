"""Cache and card I/O at the bottom of the package: where artefacts live and what they record.

    cache_root()   the content-addressed cache ($DOUBLEBIND_CACHE, default ~/.cache/doublebind)
    CARD           the organism card's file name
    versions()     library versions every card and summary records
    drop_unfinished_build(h)  remove what this process's failed build of organism h left
    set_aside_build(entry)    hide a cached build while `organism build --no-cache` rebuilds it
    restore_set_aside_builds(organisms)  put back what a killed rebuild left hidden
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from doublebind import __version__

CARD = "organism.json"


def cache_root() -> Path:
    """$DOUBLEBIND_CACHE, or ~/.cache/doublebind when it is unset or empty (an empty value was
    the current folder, which filled whatever folder a command ran in with cache entries)."""
    return Path(os.environ.get("DOUBLEBIND_CACHE") or Path.home() / ".cache" / "doublebind")


def versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"doublebind": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def drop_unfinished_build(organism_hash: str) -> None:
    """Remove the half-built organism a failed build of `organism_hash` by this process left
    in the cache. A build makes it as `organisms/.<hash>.tmp<pid>` and renames it into place
    when done; a build that raised (a non-finite loss, Ctrl-C) left it there, one folder per
    failure. Another process's folder is never touched: it may still be building."""
    import shutil

    shutil.rmtree(cache_root() / "organisms" / f".{organism_hash}.tmp{os.getpid()}", ignore_errors=True)


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
