"""Files written whole or not at all.

`write_json(path, data)` writes beside `path` under a hidden temporary name of its own, then
renames it over `path` (atomic on one filesystem): a reader, or a run killed mid-write, sees
the old file or the new one, never half of one. The temporary name is created exclusively
(`O_EXCL`) with a random part, so two writers, even two processes with the same pid in two
containers sharing a cache, never share one. It is removed when the write fails; only a kill
between the write and the rename leaves one (`.NAME.<random>.tmp`, never read). The file
gets the mode any new file gets under the process's umask. The data reach the disk (`fsync`)
before the rename, so a power cut too leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def naming(path: Path):
    """An `OSError` raised in the block names `path` when it names no file itself (a full
    disk's `ENOSPC` from a write or fsync carries no filename, so its message would not say
    which file could not be written)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def write_json(path: Path, data, **dump) -> None:
    """`json.dumps(data, **dump)` into `path`, whole or not at all."""
    path = Path(path)
    text = json.dumps(data, **dump)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:  # the file asked for, not the temporary beside it that could not be made
            raise OSError(e.errno, e.strerror, str(path)) from None
        break
    try:
        with naming(path):
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename: a power cut leaves the old file, not an empty one
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
