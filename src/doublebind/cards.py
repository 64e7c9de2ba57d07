"""Cache and card I/O at the bottom of the package: where artefacts live and what they record.

    cache_root()   the content-addressed cache ($DOUBLEBIND_CACHE, default ~/.cache/doublebind)
    CARD           the organism card's file name
    versions()     library versions every card and summary records
    drop_unfinished_build(h)  remove what this process's failed build of organism h left
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

