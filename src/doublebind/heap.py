"""Keep freed memory in the process instead of handing it back to the system on every step.

A training step of doublebind's small students allocates and frees tens of megabytes of
activations and gradients. glibc's malloc gives the freed top of its heap back to the system
once more than `M_TRIM_THRESHOLD` of it is free (128 KiB, raised only by its own heuristic),
and serves each allocation above `M_MMAP_THRESHOLD` from a fresh `mmap`. Either way the next
step touches new pages, and the kernel zeroes each one on its first touch: about 1,000 page
faults a step of the study recipe on the default organism (1,081 against 14 kept, median of
6 blocks; 26.4 ms a step against 24.0, 1.10x; `benchmarks/heap.py`). Raising both thresholds
keeps that memory in the process, where the next step reuses it.

    DOUBLEBIND_HEAP=keep      (default) the thresholds below, on glibc; a no-op elsewhere
    DOUBLEBIND_HEAP=system    malloc's own settings, as the process started with

Arithmetic does not change: torch aligns every buffer to 64 bytes whichever way malloc
serves it, and the same seed gives bit-identical weights either way (tested). What is kept:
free space at the top of each malloc arena up to `TRIM_THRESHOLD` (256 MiB) before any is
handed back, per process (each study worker has its own); free holes below live blocks stay
in the process whatever the setting, as they always did. Blocks of `MMAP_THRESHOLD` or more
(the largest tensors of a real language model) are still mapped and unmapped one by one.
The CLI applies this once, before any command runs, and every study worker at its start.
"""

from __future__ import annotations

import ctypes
import os
import platform

from doublebind.errors import DoublebindError

ENV = "DOUBLEBIND_HEAP"
CHOICES = ("keep", "system")
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 256 << 20  # free heap kept before any is handed back
MMAP_THRESHOLD = 32 << 20  # glibc's largest: 4 MiB * sizeof(long) on 64-bit systems

_applied: bool | None = None  # what the first call did, in this process


def planned(environ=os.environ) -> str:
    """`keep` or `system`, from $DOUBLEBIND_HEAP; one clear error for anything else."""
    raw = environ.get(ENV, "").strip().lower() or "keep"
    if raw not in CHOICES:
        raise DoublebindError(f"{ENV}={environ.get(ENV)!r}: expected one of {', '.join(CHOICES)}")
    return raw


def keep_freed_memory(environ=os.environ) -> bool:
    """Raise malloc's trim and mmap thresholds for this process, once; returns whether they
    are raised (False with DOUBLEBIND_HEAP=system, or where the C library is not glibc)."""
    global _applied
    choice = planned(environ)
    if _applied is not None:
        return _applied
    _applied = False
    if choice == "keep" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
