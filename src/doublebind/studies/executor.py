"""Run a study's independent runs side by side: worker processes, one torch thread each.

    doublebind study run configs/studies/default.yaml --out runs/demo --workers 2

A study is a grid of runs that share nothing but read-only inputs (the organism, cached
teacher outputs), so they parallelise as whole runs. At the sizes of the embedded world a
training step's matrix products are too small to use more than one core well: on 2 cores,
two one-thread processes side by side do about 1.5x the work of one two-thread process
(issue 13; `benchmarks/throughput.py` measures it on your machine). Batching K students
into one computation (`torch.func` vmap over 8 stacked students) was measured in the same
issue at only 1.08x per student, so runs stay separate processes.

How many workers (`workers_for`):

    --workers N              N worker processes (N >= 1)
    DOUBLEBIND_WORKERS=N     the same, when --workers is not given
    otherwise                the cores this process may use; 1 on a GPU machine for a study
                             with a Hugging Face organism (sharing one GPU between runs is
                             not measured yet: pass --workers to try; the embedded world
                             trains on the CPU) and 1 under a parallel launcher (`accelerate launch`:
                             every process runs every run, as before)

The same numbers whatever the worker count: every run computes with one intra-op thread,
in a worker or, with one worker, in the calling process itself (`one_thread`), and a run
depends only on its own seed, not on the runs before it in the same process (the caches a
process keeps, such as reference metrics and the weights memo, hold deterministic values
only). The thread
count is the one thing that changes float results (matrix products split their sums by
thread), so `summary.json` is byte-identical for any --workers (tests/test_parallel_study.py).

`run_jobs` knows nothing of studies: it takes jobs by key, calls `fn(*args)` for each, and
hands every result to `on_done(key, result)` in the calling process, in the order runs
finish. So the caller alone writes files (results.jsonl stays append-only, one write per
finished run), and a kill loses only the runs still in flight. Workers ignore Ctrl-C (the
main process stops them) and die with the main process even when it is killed with SIGKILL
(Linux PR_SET_PDEATHSIG, and a thread that watches the parent's pid on every platform). The
first failing run stops the dispatch of new runs; the runs in flight finish and are handed
over, then its error is raised in the caller as it would have been raised in-process.

How workers start (`_context`): forked from a fork server, a clean process that imported a
run's modules (`PRELOAD`) and did nothing else: no torch computation, so no thread pools and
no CUDA state to inherit. A worker then starts with torch, transformers and doublebind
loaded, where a spawned one imported them itself (about 4 s, and a run's first call another
3 s for transformers' model code). The server is started once per process that starts
pools, as a study begins (`warm_up`, so that it imports while the main process places the
organisms); a study's placing pool and its run pool share it, as do a benchmark's passes and
the test suite's pools. When the environment, the Python path or the files behind stdout
and stderr have changed by the next pool (a test's `monkeypatch.setenv`, a variable some
library reads at import, pytest's capture), it is started again, so a worker always sees
what a spawned one would (`_environment`, `_VOLATILE` aside).
`DOUBLEBIND_START=spawn` spawns each worker instead, the one way where there is no fork
server (Windows).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import threading
import traceback
from typing import Any, Callable, Hashable, NoReturn

from doublebind.errors import DoublebindError, VerificationError

ENV = "DOUBLEBIND_WORKERS"
START_ENV = "DOUBLEBIND_START"  # how workers start: forkserver (where there is one) or spawn

# What a worker imports before its first run: the fork server loads these once, and each
# worker forked from it starts with them (a run's first call imports the rest lazily).
PRELOAD = ("doublebind.studies.run", "doublebind.training.distill", "doublebind.organisms.domain",
           "doublebind.audits.auditor", "doublebind.techniques", "doublebind.heap",
           "transformers.models.llama.modeling_llama")


MAX_WORKERS = 256  # each worker is a process holding torch and its own copy of a run's models


def parse_workers(raw: str | int, what: str) -> int:
    """A worker count from a flag or the environment; one clear error otherwise."""
    try:
        n = int(str(raw).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise DoublebindError(f"{what}={raw!r}: expected a whole number of worker processes >= 1")
    if n > MAX_WORKERS:
        raise DoublebindError(f"{what}={raw!r}: at most {MAX_WORKERS} worker processes (each loads torch and a "
                              f"run's models)")
    return n


def workers_for(requested: int | None = None, environ=os.environ, cores: int | None = None,
                cuda: bool | None = None) -> int:
    """The number of worker processes a study uses (see the module docstring)."""
    from doublebind.threads import cpu_count, local_processes

    if requested is not None:
        n = parse_workers(requested, "--workers")
    elif environ.get(ENV, "").strip() not in ("", "auto"):
        n = parse_workers(environ[ENV], ENV)
    else:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        n = 1 if cuda else (cores or cpu_count())
    return 1 if local_processes(environ) > 1 else n


@contextlib.contextmanager
def one_thread():
    """Compute with one intra-op torch thread inside the block (as a worker always does)."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_jobs(fn: Callable, jobs: dict[Hashable, tuple], workers: int,
             on_done: Callable[[Hashable, Any], None], label: Callable[[Hashable], str] = str) -> None:
    """Call `fn(*args)` for every `key: args` of `jobs`, `workers` at a time, and
    `on_done(key, result)` in this process as each finishes.

    `fn` must be a module-level function (workers import it by name); args and results
    must pickle. With one worker (or one job) everything runs here, in order."""
    if workers <= 1 or len(jobs) <= 1:
        for key, args in jobs.items():
            try:
                with one_thread():
                    result = fn(*args)
            except Exception as e:  # named as the workers name it: an error with its run, a bug with failed_in
                raise_named(e, label(key))
            on_done(key, result)
        return
    _Pool(fn, min(workers, len(jobs)), label).run(jobs, on_done)


# ---- how workers start -----------------------------------------------------------------

_server_env: dict | None = None  # `_environment()` when the running fork server started
# Variables that change between pools for reasons that concern no worker: pytest names the
# current test in PYTEST_CURRENT_TEST, so comparing it would start the server again for every
# test of the suite that starts a pool.
_VOLATILE = ("PYTEST_CURRENT_TEST",)


def _environment() -> dict:
    """What a fork server hands its workers that must be this process's own: the environment
    (`_VOLATILE` aside), the Python path, and where stdout and stderr go (a worker writes to
    the files the server had; pytest's capture changes them between tests)."""
    import sys

    streams = []
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
            streams.append((st.st_dev, st.st_ino))
        except OSError:
            streams.append(None)
    return {"environ": {k: v for k, v in os.environ.items() if k not in _VOLATILE},
            "sys.path": list(sys.path), "streams": streams}


def start_method(environ=os.environ) -> str:
    """`forkserver` or `spawn`: $DOUBLEBIND_START, else the fork server where the platform has
    one; one clear error for anything else."""
    import multiprocessing as mp

    raw = environ.get(START_ENV, "").strip().lower()
    if raw not in ("", "forkserver", "spawn"):
        raise DoublebindError(f"{START_ENV}={environ.get(START_ENV)!r}: expected forkserver or spawn")
    if raw == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return "spawn"
    return "forkserver"


def _context():
    """The multiprocessing context workers start from (see the module docstring): a running
    fork server whose environment is this process's, started (again) if need be."""
    global _server_env
    import multiprocessing as mp
    from multiprocessing import forkserver

    method = start_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        server = forkserver._forkserver
        if _server_env is not None and _server_env != _environment():
            _stop_server(server)  # started with another environment: what it imported may have read it
            _server_env = None
        if _server_env is None or server._forkserver_pid is None:
            ctx.set_forkserver_preload(list(PRELOAD))
            _server_env = _environment()
        _start_server(server)
    return ctx


def _start_server(server) -> None:
    """`ensure_running`, which returns at once (the server imports in the background). A
    server that died and that other code already reaped makes its wait fail with
    ChildProcessError: the stale server is cleared and a new one started."""
    try:
        _ensure_running(server)
    except ChildProcessError:
        _stop_server(server)
        _ensure_running(server)


def _ensure_running(server) -> None:
    """Before Python 3.12 the server ignored this process's `sys.path` and so could import
    doublebind from another tree than this process's: it starts with that path as its
    PYTHONPATH."""
    import sys

    if sys.version_info >= (3, 12):  # below, also for a server that died: its restart needs the path too
        with _sigint_ignored():
            server.ensure_running()
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        with _sigint_ignored():
            server.ensure_running()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while the fork server is started, so that it starts ignoring it: Ctrl-C
    reaches the whole process group, and a server still making its imports (about 4 s; it
    ignores SIGINT only after them) died of it with a KeyboardInterrupt traceback over the
    study's own message. The main process acts on Ctrl-C; the server exits when the main
    process does (its "alive" pipe closes), a few seconds later if it was still importing; its
    workers ignore SIGINT anyway. The main process ignores it only while the server is spawned (a
    Ctrl-C in that millisecond is dropped). The server is multiprocessing's, one per process:
    other code of the same process that forks from it gets children that ignore SIGINT too."""
    before = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or before is None:
        yield  # only the main thread may set handlers; None: one set outside Python, not restorable
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _stop_server(server) -> None:
    """Stop the fork server now. Its own stop waits until every holder of its "alive" pipe has
    closed it, which a process forked from this one (not by doublebind) may hold for as long
    as it lives; its workers of earlier pools are gone, so it is ended outright. A server
    already reaped elsewhere (`waitpid` fails) or whose socket file is gone (`unlink` fails)
    made `_stop` raise half-way, leaving a state in which every later start failed: the state
    is cleared whatever `_stop` managed."""
    with contextlib.suppress(OSError):
        if server._forkserver_pid is not None:
            os.kill(server._forkserver_pid, signal.SIGTERM)
    from multiprocessing import util

    with contextlib.suppress(OSError, TypeError):
        server._stop()
    with server._lock:
        if server._forkserver_alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(server._forkserver_alive_fd)
        if server._forkserver_address and not util.is_abstract_socket_namespace(server._forkserver_address):
            with contextlib.suppress(OSError):
                os.unlink(server._forkserver_address)
        server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None


def _server_gone(e: BaseException) -> bool:
    """Whether a worker's failed start says the fork server is gone: its socket refuses, is
    reset or was removed, the server hung up (EOFError), or it died and was reaped by other
    code (`ensure_running`'s wait for it finds no child). A file-descriptor limit (EMFILE)
    or a failed allocation says nothing about the server (nor does a deleted working
    directory, which `_start_worker` reports before asking)."""
    return isinstance(e, (EOFError, ConnectionError, FileNotFoundError, ChildProcessError))


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


def _restart_server():
    """Stop the fork server, dead or dying, and start a new one (`_context`)."""
    global _server_env
    from multiprocessing import forkserver

    _stop_server(forkserver._forkserver)
    _server_env = None
    return _context()


def warm_up() -> None:
    """Start the fork server now, so that its imports overlap the caller's own set-up."""
    with contextlib.suppress(Exception):  # the pool itself reports any real problem
        _context()


# ---- the pool --------------------------------------------------------------------------

class _Pool:
    def __init__(self, fn: Callable, size: int, label: Callable[[Hashable], str]):
        from doublebind.heap import planned

        planned()  # a bad $DOUBLEBIND_HEAP is refused here, once, not in every worker
        self.ctx = _context()
        self.fn_ref = f"{fn.__module__}:{fn.__qualname__}"
        self.size, self.label = size, label
        self.procs: list = []
        self.conns: list = []

    def _start_worker(self, w: int, again: bool) -> None:
        """Start worker `w`. A fork server killed a moment before the pool started can still
        look alive while its socket is already closed (`ensure_running` then keeps it), so the
        first worker's start that fails as a gone server does is tried `again` once on a new
        server; a server that fails then too (a module it preloads fails) is one error. Any
        other OSError (a file-descriptor or memory limit) is this process's, not the server's:
        it is reported as it is, and the server is left running."""
        import doublebind

        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, name=f"doublebind-worker-{w}", daemon=True,
                             args=(child, self.fn_ref, os.getpid(), doublebind.__file__, os.environ.get("PYTHONPATH")))
        try:
            p.start()
        except (EOFError, OSError) as e:  # the fork server is gone or died (a module it preloads failed)
            parent.close()
            child.close()
            if not _cwd_exists():
                raise DoublebindError("could not start a worker process: the working directory was deleted; "
                                      "run the study again from a directory that exists (finished runs are kept)") from None
            if self.ctx.get_start_method() != "forkserver" or not _server_gone(e):
                raise DoublebindError(f"could not start a worker process ({type(e).__name__}: {e})") from None
            if again:
                self.ctx = _restart_server()
                return self._start_worker(w, again=False)
            raise DoublebindError(
                f"the workers' fork server did not start ({type(e).__name__}: {e}); set "
                f"{START_ENV}=spawn to start each worker on its own") from None
        child.close()
        self.procs.append(p)
        self.conns.append(parent)

    def run(self, jobs: dict, on_done: Callable) -> None:
        from multiprocessing.connection import wait

        keys = list(jobs)
        pending = list(range(len(keys)))[::-1]  # a stack: pop() gives the grid's order
        busy: dict[int, int] = {}  # worker index -> job index
        # The failures of the jobs in flight, by job index: the first in the grid's order is
        # raised (the one one worker would have met first), whichever ended first here.
        failures: dict[int, BaseException] = {}
        try:
            for w in range(self.size):
                self._start_worker(w, again=w == 0)

            def dispatch(w: int) -> None:
                busy[w] = pending.pop()
                try:
                    self.conns[w].send((busy[w], jobs[keys[busy[w]]]))
                except OSError:  # the worker is gone; its sentinel reports it below
                    pass

            for w in range(self.size):
                if pending:
                    dispatch(w)
            while busy:
                ready = wait([self.conns[w] for w in busy] + [self.procs[w].sentinel for w in busy])
                for w in list(busy):
                    if self.conns[w] not in ready and self.procs[w].sentinel not in ready:
                        continue
                    job = busy.pop(w)
                    try:
                        if self.conns[w] not in ready and not self.conns[w].poll():
                            # it exited without a result; a process it forked may still hold its
                            # end of the pipe, and `recv` would wait for that one to exit too
                            raise EOFError
                        kind, index, payload, remote_tb = self.conns[w].recv()
                    except (EOFError, OSError):
                        code = self.procs[w].exitcode
                        self.procs[w].join(timeout=5)
                        code = self.procs[w].exitcode if code is None else code
                        forked = self.ctx.get_start_method() == "forkserver"
                        failures[job] = DoublebindError(
                            f"the worker process running {self.label(keys[job])} died ("
                            f"{_describe_exit(code, forked)}); finished runs are kept, rerun to resume")
                        continue
                    except Exception as e:  # noqa: BLE001 (a result this process cannot unpickle)
                        failures[job] = DoublebindError(
                            f"the result of {self.label(keys[job])} could not be read back from its worker "
                            f"({type(e).__name__}: {e}); finished runs are kept, rerun to resume")
                        continue
                    if kind == "ok":
                        try:
                            on_done(keys[index], payload)
                        except Exception as e:  # noqa: BLE001 (its rows refused, the results file full: the
                            failures[index] = e  # runs in flight still finish and are handed over)
                    else:
                        failures[index] = named_error(_rebuild(payload, remote_tb), self.label(keys[index]))
                    if pending and not failures:
                        dispatch(w)
            if failures:
                raise failures[min(failures)]
        finally:
            self.close()

    def close(self) -> None:
        """Stop every worker: ask the idle ones to leave, terminate the rest, never leave one."""
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for p in self.procs:
            p.join(timeout=0.5)
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


def _describe_exit(code: int | None, forked: bool = False) -> str:
    """Why a worker ended without a result, from its exit code. A worker forked from the fork
    server has its exit status reported by the server; with the server gone (killed: its workers
    die with it) multiprocessing has none to read and gives 255, which is said as such."""
    if forked and code == 255:
        return "exit status lost: the fork server that started it is gone, killed or crashed, and it died with it"
    if code is not None and code < 0:
        try:
            return f"exit code {code}: killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"exit code {code}: killed by signal {-code}"
    return f"exit code {code}: it exited without a result"


def _portable(exc: BaseException) -> BaseException:
    """`exc` itself when it survives pickling, else an exception of a base type with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 (any unpicklable exception is carried as its text)
        base = DoublebindError if isinstance(exc, DoublebindError) else RuntimeError
        return base(str(exc)) if base is DoublebindError else base(f"{type(exc).__name__}: {exc}")


def named_error(exc: BaseException, what: str) -> BaseException:
    """A job's `DoublebindError` with the job named in front (which run of a study failed);
    other exceptions (bugs, shown as such) as they are, with the job kept in `failed_in` for
    the command line's one-line report of a bug."""
    if isinstance(exc, Exception) and not isinstance(exc, DoublebindError):
        exc.failed_in = what
    if not isinstance(exc, DoublebindError) or isinstance(exc, VerificationError):  # that one names its organism
        return exc
    named = type(exc)(f"{what}: {exc}")
    for note in getattr(exc, "__notes__", []):
        named.add_note(note)
    return named


def raise_named(exc: Exception, what: str) -> NoReturn:
    """Raise `exc` as `named_error` names it: a new error with the job in front, or a bug
    itself (its traceback kept) with `failed_in` set."""
    named = named_error(exc, what)
    if named is exc:
        raise exc
    raise named from exc


def _rebuild(exc: BaseException, remote_tb: str) -> BaseException:
    exc.add_note(f"raised in a study worker process:\n{remote_tb}")  # shown with DOUBLEBIND_DEBUG=1
    return exc


# ---- the worker ------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """Exit when the main process dies, even by SIGKILL (it cannot stop us then).

    A spawned worker's parent is the main process. A forked one's is the fork server, which
    exits when every holder of its "alive" pipe has closed it: the main process and, as
    inherited, each worker. A worker closes its copy here, so the server lives exactly as
    long as the main process, and the worker dies with the server."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:  # forked from the server (a spawned worker has none)
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = os.getppid()  # after the prctl: a parent that died before it is seen here
    # (reparented to init, unless the main process is init itself: spawned in a container
    # whose entry point is doublebind, its workers' parent is PID 1)
    if (parent == 1 and parent_pid != 1) or not pid_alive(parent_pid):
        os._exit(1)

    def watch() -> None:
        import time

        while True:  # the main process too: a process it forked keeps the server alive
            if os.getppid() != parent or not pid_alive(parent_pid):
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="doublebind-parent-watch", daemon=True).start()


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


class _Terminated(BaseException):
    """SIGTERM in a worker (the pool's `close`), raised so that a job's own clean-up runs."""


def _terminated(signum, frame) -> None:
    raise _Terminated


def _worker_main(conn, fn_ref: str, parent_pid: int, package: str | None = None,
                 pythonpath: str | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the main process acts on it
    # Stopped mid-job (Ctrl-C or a failure in the main process), a job unwinds as from an
    # error, so what it cleans up on one is cleaned up (a half-built organism in the cache);
    # then the worker dies of the signal, as it would have at once.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        _serve(conn, fn_ref, parent_pid, package, pythonpath)
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _serve(conn, fn_ref: str, parent_pid: int, package: str | None, pythonpath: str | None) -> None:
    _die_with_parent(parent_pid)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    if pythonpath is None:  # the main process's own (`_start_server` may have set the server's)
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = pythonpath
    import doublebind

    # A worker must run the code the main process runs, not another copy of the package.
    problem = (None if package is None or os.path.samefile(doublebind.__file__, package) else
               f"a study worker imported doublebind from {doublebind.__file__}, the main process from "
               f"{package}; set {START_ENV}=spawn")
    from doublebind.heap import keep_freed_memory

    keep_freed_memory()  # checked by the main process before any worker starts
    import torch

    torch.set_num_threads(1)
    from doublebind.organisms.models import quiet_transformers

    quiet_transformers()
    module, name = fn_ref.split(":")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, args = msg
        if problem:
            conn.send(("error", index, DoublebindError(problem), ""))
            continue
        try:
            _send(conn, ("ok", index, fn(*args), ""))
        except _Terminated:
            raise
        except BaseException as e:  # noqa: BLE001 (every failure goes back to the main process)
            _send(conn, ("error", index, _portable(e), traceback.format_exc()))


def _send(conn, msg) -> None:
    """Send to the main process; if it is gone (killed: the worker outlives it by up to a
    second), leave quietly, where a traceback of the broken pipe reached the terminal after
    the shell had returned. A result that cannot be pickled raises, and goes back as an error."""
    try:
        conn.send(msg)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        os._exit(1)
