"""Checks on output folders, made before any work starts.

    check_out_dir(path, "--out", what="a run")

An output path that is a file, that lies inside a file, or whose nearest existing folder
cannot be written to is refused at once with one line, not after minutes of training.
"""

from __future__ import annotations

import os
from pathlib import Path

from doublebind.errors import DoublebindError


def check_out_dir(path: Path, flag: str = "--out", *, what: str = "an output") -> None:
    """Raise a one-line `DoublebindError` unless `path` is a folder or can be made one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DoublebindError(f"{flag} {path} is a file, not {what} folder")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DoublebindError(f"{flag} {path}: {parent} is a file, so no folder can be made inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DoublebindError(f"{flag} {path}: cannot write to {parent} (permission denied)")
