"""How many CPU threads torch uses: a deliberate, documented policy.

torch's default takes every core for one process. That is the fastest choice for a single
doublebind process, and the slowest one when several run side by side: two processes that
each spin a thread per core on the same cores slow each other down several-fold (measured
in issue 14: a quick build went from 83 s to more than 600 s). The CLI applies this policy
once, before any command runs:

    DOUBLEBIND_THREADS=N     use N threads (N >= 1); `auto` or unset: the rules below
    OMP_NUM_THREADS set      respected as it is (torch already reads it)
    under a launcher         cores / processes on this machine, at least 1 (accelerate
                             launch, torchrun, mpirun, srun: LOCAL_WORLD_SIZE and friends)
    otherwise                torch's own default (all physical cores), for one process

Organism builds (`organism build`, a study's placing) and study runs compute on one thread
whatever this says: a result's rounding depends on the thread count, and one organism hash
must mean one set of weights on a machine, one study the same rows for any `--workers`.

When you run two doublebind processes side by side yourself (two studies in two shells),
set DOUBLEBIND_THREADS=1 (or OMP_NUM_THREADS=1) in each; the launchers above are detected.
`benchmarks/threads.py` measures the difference.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

from doublebind.errors import DoublebindError

ENV = "DOUBLEBIND_THREADS"
# Variables a parallel launcher sets to the number of processes on this machine (first found wins).
_LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


# Variables a parallel launcher sets to this process's global rank (accelerate reads the same
# ones before its state is built: torchrun, Intel MPI / MPICH, Open MPI, MVAPICH).
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def launcher_rank(environ=os.environ) -> int:
    """This process's rank under a parallel launcher, before accelerate's state exists (0 when
    there is none): what a step that only the first process may take checks."""
    for var in _RANK_VARS:
        try:
            return int(environ[var])
        except (KeyError, ValueError):
            continue
    return 0


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, not the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_processes(environ=os.environ) -> int:
    """How many processes a parallel launcher started on this machine (1 when none)."""
    for var in _LOCAL_SIZE_VARS:
        raw = environ.get(var, "")
        try:
            n = int(raw.split("(")[0].split(",")[0])
        except ValueError:
            continue
        if n > 0:
            return n
    try:  # accelerate launch / torchrun without LOCAL_WORLD_SIZE: WORLD_SIZE on one machine
        return max(1, int(environ.get("WORLD_SIZE", "1"))) if "LOCAL_RANK" in environ else 1
    except ValueError:
        return 1


def planned_threads(environ=os.environ, cores: int | None = None) -> tuple[int | None, str]:
    """(threads, why) the policy picks; threads is None when torch's default is kept."""
    raw = environ.get(ENV, "").strip().lower()
    if raw not in ("", "auto"):
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise DoublebindError(f"{ENV}={environ.get(ENV)!r}: expected a whole number of threads >= 1, or auto")
        return n, f"{ENV}={n}"
    if environ.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']} (torch reads it)"
    procs = local_processes(environ)
    if procs > 1:
        cores = cores or cpu_count()
        return max(1, cores // procs), f"{procs} processes on {cores} cores"
    return None, "torch's default for one process"


def apply_thread_policy(environ=os.environ) -> int | None:
    """Set torch's intra-op threads by the policy; returns the count set, or None when
    torch's own choice stands. Never imports torch: when it is not loaded yet, the count is
    set the moment it loads (`_WhenTorchLoads`), so input refused before then is refused in
    well under a second whatever the policy; when it is loaded, it is set here."""
    n, _ = planned_threads(environ)
    if n is None:
        return None
    torch = sys.modules.get("torch")
    if torch is None:  # one hook, the latest policy's
        sys.meta_path[:] = [_WhenTorchLoads(n), *(f for f in sys.meta_path if not isinstance(f, _WhenTorchLoads))]
    elif torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class _WhenTorchLoads(importlib.abc.MetaPathFinder):
    """Sets torch's threads as soon as torch has loaded, wherever it is first imported.

    An import hook rather than `OMP_NUM_THREADS`: torch caps that variable at the machine's
    cores when it loads, where `torch.set_num_threads` (what `DOUBLEBIND_THREADS` promises)
    takes the number as given. It asks the other finders for torch's module spec and runs
    `set_num_threads` right after the module's own code, then restores the loader and leaves
    `sys.meta_path`; until then it stays, since a spec may be looked up without loading it
    (`importlib.util.find_spec`, as libraries check whether torch is installed). A finder
    put in front of it later could load torch without it (none in doublebind's dependencies
    does)."""

    def __init__(self, n: int):
        self.n = n

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        spec = next((s for f in list(sys.meta_path) if f is not self and hasattr(f, "find_spec")
                     and (s := f.find_spec(name, path, target)) is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, hook = spec.loader, self
        load = loader.exec_module

        def exec_module(module):
            load(module)
            if module.__name__ != "torch":  # a loader shared with other modules: not torch yet
                return
            if loader.__dict__.get("exec_module") is exec_module:
                del loader.exec_module  # the loader as it was (picklable again)
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
            if module.get_num_threads() != hook.n:
                module.set_num_threads(hook.n)

        loader.exec_module = exec_module
        return spec
