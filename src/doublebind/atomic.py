"""Files written whole or not at all.

`write_json(path, data)` writes beside `path` under a hidden temporary name, then renames it
over `path` (atomic on one filesystem): a reader, or a run killed mid-write, sees the old
file or the new one, never half of one. The temporary file is removed when the write
fails; only a kill between the write and the rename leaves one (`.NAME.tmp<pid>-<thread>`,
never read). The file gets the mode any new file gets under the process's umask.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def write_json(path: Path, data, **dump) -> None:
    """`json.dumps(data, **dump)` into `path`, whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_text(json.dumps(data, **dump))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
