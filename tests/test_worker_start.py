"""How study workers start (doublebind.studies.executor `_context`): forked from a fork
server that has imported a run's modules, started again when the environment changes; and
cached organisms copied in the main process, not in a pool."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from doublebind.errors import DoublebindError
from doublebind.studies import executor
from doublebind.studies import run as study_run

pytestmark = pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                                reason="no fork server on this platform")


def _where(key: str, name: str):
    """A job stand-in (module level: workers import it by name): where it ran and what it saw."""
    return {"pid": os.getpid(), "ppid": os.getppid(), "env": os.environ.get(name),
            "preloaded": "transformers.models.llama.modeling_llama" in sys.modules}


def _kill_server_or_sleep(key: str, what: str):
    """A job stand-in: 'kill' SIGKILLs its parent, the fork server (the worker dies with it),
    then waits; 'sleep' waits a little and returns, or dies with the server too."""
    import signal
    import time

    if what == "kill":
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
    time.sleep(1.0)
    return key


def _pool(name: str = "DOUBLEBIND_TEST_START") -> dict:
    got = {}
    executor.run_jobs(_where, {k: (k, name) for k in "ab"}, 2, got.__setitem__)
    return got


def test_workers_fork_from_one_server_that_imported_the_run_s_modules(monkeypatch):
    monkeypatch.delenv(executor.START_ENV, raising=False)
    first = _pool()
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "another test")  # pytest's own, changed for every test: no restart
    second = _pool()
    servers = {r["ppid"] for r in [*first.values(), *second.values()]}
    assert len(servers) == 1 and os.getpid() not in servers  # both pools forked from one server
    assert all(r["preloaded"] for r in [*first.values(), *second.values()])
    assert len({r["pid"] for r in first.values()} | {r["pid"] for r in second.values()}) == 4  # new workers each pool


def test_a_changed_environment_restarts_the_server(monkeypatch):
    """A worker sees the environment of the moment its pool starts, as a spawned one would
    (a variable read at import time could otherwise be stale)."""
    monkeypatch.delenv(executor.START_ENV, raising=False)
    monkeypatch.setenv("DOUBLEBIND_TEST_START", "one")
    first = _pool()
    monkeypatch.setenv("DOUBLEBIND_TEST_START", "two")
    second = _pool()
    assert {r["env"] for r in first.values()} == {"one"} and {r["env"] for r in second.values()} == {"two"}
    assert {r["ppid"] for r in first.values()}.isdisjoint({r["ppid"] for r in second.values()})


def test_spawn_on_request_and_a_bad_start_method_is_one_error(monkeypatch):
    monkeypatch.setenv(executor.START_ENV, "spawn")
    got = _pool()
    assert {r["ppid"] for r in got.values()} == {os.getpid()}  # spawned: children of this process
    monkeypatch.setenv(executor.START_ENV, "fork")
    with pytest.raises(DoublebindError, match=r"^DOUBLEBIND_START='fork': expected forkserver or spawn$"):
        executor.run_jobs(_where, {"a": ("a", "X"), "b": ("b", "X")}, 2, lambda k, r: None)


class _Spec:
    def __init__(self, name: str, root: Path):
        self.key, self.cfg, self.root = (name, 0), name, root

    def folder(self, out: Path) -> Path:
        return out / self.key[0]


def test_cached_organisms_are_copied_here_and_only_builds_go_to_workers(monkeypatch, tmp_path):
    """Placing two cached organisms with --workers 2 starts no pool (a worker would only add
    its start-up to a copy); one to build with one cached goes to no pool either (one build
    runs here), and two to build go to the pool. What runs here runs on one thread, as in a
    worker: a build with the process's two threads made another organism (other weights,
    the same hash) than the pool's, so `--workers 1` and `--workers 2` disagreed."""
    import torch

    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "cache"))
    for h, card in {"aaa": {"verified": True}, "bbb": {"verified": True}, "ccc": {"verified": False}}.items():
        (tmp_path / "cache" / "organisms" / h).mkdir(parents=True)
        (tmp_path / "cache" / "organisms" / h / "organism.json").write_text(json.dumps(card))
    (tmp_path / "cache" / "organisms" / "ddd").mkdir()
    (tmp_path / "cache" / "organisms" / "ddd" / "organism.json").write_text("{not json")
    assert [study_run._cached(h) for h in ("aaa", "bbb", "ccc", "ddd", "eee")] == [True, True, False, False, False]

    here, pooled, threads = [], [], []

    def place(cfg, dest, *a, **k):
        here.append(cfg)
        threads.append(torch.get_num_threads())

    monkeypatch.setattr(study_run, "place_organism", place)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(executor, "run_jobs", lambda fn, jobs, *a, **k: pooled.append(sorted(j[0] for j in jobs.values())))
        specs = {n: _Spec(n, tmp_path) for n in ("A", "B", "C", "D")}
        hashes = {("A", 0): "aaa", ("B", 0): "bbb", ("C", 0): "ccc", ("D", 0): "eee"}
        study_run.place_organisms([specs["A"], specs["B"]], tmp_path / "out", hashes, 2, show_progress=False)
        assert here == ["A", "B"] and pooled == []
        here.clear()
        study_run.place_organisms([specs["A"], specs["C"]], tmp_path / "out", hashes, 2, show_progress=False)
        assert here == ["A", "C"] and pooled == []
        here.clear()
        study_run.place_organisms([specs["A"], specs["C"], specs["D"]], tmp_path / "out", hashes, 2, show_progress=False)
        assert here == ["A"] and pooled == [["C", "D"]]
        here.clear()
        study_run.place_organisms([specs["C"], specs["D"]], tmp_path / "out", hashes, 1, show_progress=False)
        assert here == ["C", "D"] and pooled == [["C", "D"]]
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert threads == [1] * 7 and after == 2  # one thread while placing; the process's own after


def _say(key: str, name: str):
    """A job that writes to its stdout (module level: workers import it by name)."""
    print(f"line from worker {key}", flush=True)
    return os.getpid()


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_workers_write_to_this_process_s_current_stdout(capfd, monkeypatch):
    """A server started while stdout went elsewhere is started again: workers write to the
    files a spawned worker would (pytest's capture changes them between tests)."""
    monkeypatch.delenv(executor.START_ENV, raising=False)
    with capfd.disabled():
        executor.run_jobs(_where, {k: (k, "X") for k in "ab"}, 2, lambda k, r: None)
    executor.run_jobs(_say, {k: (k, "X") for k in "ab"}, 2, lambda k, r: None)
    out = capfd.readouterr().out
    assert "line from worker a" in out and "line from worker b" in out


def test_a_restart_does_not_wait_for_other_forks_of_this_process(monkeypatch):
    """A process forked from this one holds the server's "alive" pipe as long as it lives;
    starting the server again must not wait for it."""
    import multiprocessing as mp
    import time

    monkeypatch.delenv(executor.START_ENV, raising=False)
    _pool()
    other = mp.get_context("fork").Process(target=_sleep, args=(60,), daemon=True)
    other.start()
    try:
        monkeypatch.setenv("DOUBLEBIND_TEST_START", "restart")
        t = time.perf_counter()
        got = _pool()
        assert time.perf_counter() - t < 30 and {r["env"] for r in got.values()} == {"restart"}
    finally:
        other.kill()
        other.join()


def test_a_fork_server_that_cannot_start_is_one_error(monkeypatch, tmp_path):
    (tmp_path / "doublebind_broken_preload.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(executor.START_ENV, raising=False)
    monkeypatch.setattr(executor, "PRELOAD", (*executor.PRELOAD, "doublebind_broken_preload"))
    monkeypatch.setenv("DOUBLEBIND_TEST_START", "broken")  # a new server, with the broken preload
    with pytest.raises(DoublebindError, match=r"^the workers' fork server did not start \(.*\); set "
                                              r"DOUBLEBIND_START=spawn to start each worker on its own$"):
        _pool()
    monkeypatch.setenv("DOUBLEBIND_TEST_START", "mended")
    monkeypatch.setattr(executor, "PRELOAD", executor.PRELOAD[:-1])


def test_workers_die_with_the_main_process_while_another_fork_keeps_the_server(tmp_path):
    """SIGKILL of a main process that also forked a child of its own (which keeps the fork
    server alive): the workers still go, within seconds."""
    import signal
    import subprocess
    import time

    pids = tmp_path / "pids"
    script = tmp_path / "main.py"
    script.write_text(f'''
import multiprocessing as mp, os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from doublebind.studies import executor
from tests.test_worker_start import _sleep_and_say
if __name__ == "__main__":
    other = mp.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    executor.warm_up()
    other.start()
    executor.run_jobs(_sleep_and_say, {{k: ({str(pids)!r}, k) for k in "ab"}}, 2, lambda k, r: None)
''')
    env = {k: v for k, v in os.environ.items() if k != executor.START_ENV}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(tmp_path.glob("pids.*"))) < 2:
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in tmp_path.glob("pids.*")]
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(executor.pid_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(executor.pid_alive(w) for w in workers), "workers outlived the main process"
    finally:
        with __import__("contextlib").suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_worker_that_finishes_after_the_main_process_was_killed_leaves_quietly(tmp_path):
    """A worker outlives a SIGKILLed main process by up to a second; one that finished its
    run then printed two chained BrokenPipeError tracebacks onto the terminal."""
    import signal
    import subprocess
    import time

    where, go = tmp_path / "ready", tmp_path / "go"
    script = tmp_path / "main.py"
    script.write_text(f'''
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from doublebind.studies import executor
from tests.test_worker_start import _wait_then_return
if __name__ == "__main__":
    executor.run_jobs(_wait_then_return, {{k: ({str(where)!r}, {str(go)!r}, k) for k in "ab"}}, 2, lambda k, r: None)
''')
    env = {k: v for k, v in os.environ.items() if k != executor.START_ENV}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(tmp_path.glob("ready.*"))) < 2:
            time.sleep(0.05)
        assert len(list(tmp_path.glob("ready.*"))) == 2
        os.kill(proc.pid, signal.SIGKILL)
        go.touch()  # the workers return now, to a main process that is gone
        err = proc.stderr.read()  # until the workers, which share it, are gone too
        proc.wait(timeout=30)
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
    finally:
        with __import__("contextlib").suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_then_return(ready: str, go: str, key: str) -> str:
    import time

    Path(f"{ready}.{key}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return key * 100_000  # larger than a pipe's buffer: the send meets the broken pipe


def _sleep_and_say(where: str, key: str) -> None:
    import time

    Path(f"{where}.{key}").write_text(str(os.getpid()))
    time.sleep(60)


def test_a_worker_that_cannot_start_under_spawn_is_not_called_a_fork_server_problem(monkeypatch):
    """Under DOUBLEBIND_START=spawn an OSError starting a worker (a file-descriptor limit)
    was reported as "the workers' fork server did not start …; set DOUBLEBIND_START=spawn"."""
    import multiprocessing.context

    def refused(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setenv(executor.START_ENV, "spawn")
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refused)
    with pytest.raises(DoublebindError, match=r"^could not start a worker process \(OSError: \[Errno 24\] Too many "
                                              r"open files\)$"):
        executor.run_jobs(_where, {"a": ("a", "X"), "b": ("b", "X")}, 2, lambda k, r: None)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="from 3.12 the server takes this process's path itself")
def test_a_server_that_died_starts_again_with_this_process_s_path(monkeypatch, tmp_path):
    """Before 3.12 the server is given this process's `sys.path` as its PYTHONPATH; a server
    that had died (killed, or Ctrl-C during its imports) was started again without it."""
    import signal
    import time
    from multiprocessing import forkserver

    monkeypatch.delenv(executor.START_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))  # the server is restarted for it (a path change)
    first = _pool()
    server = forkserver._forkserver
    pid = server._forkserver_pid
    assert {r["ppid"] for r in first.values()} == {pid}

    def path_of(p: int) -> list[str]:
        env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        return [e.decode() for e in env if e.startswith(b"PYTHONPATH=")]

    assert any(str(tmp_path) in e for e in path_of(pid))
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # until the kernel has it (a zombie until the restart reaps it)
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.05)
    second = _pool()
    again = server._forkserver_pid
    assert again != pid and {r["ppid"] for r in second.values()} == {again}
    assert any(str(tmp_path) in e for e in path_of(again))


def test_spawned_workers_of_a_main_process_that_is_pid_1_run(tmp_path):
    """A spawned worker left when its parent was PID 1, taking that for its parent's death:
    in a container whose entry point is doublebind the main process is PID 1, and every
    worker of DOUBLEBIND_START=spawn exited without a result."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare for a new PID namespace")
    script = tmp_path / "main.py"
    script.write_text(
        "import os\n"
        "from doublebind.studies import executor\n"
        "from tests.test_worker_start import _where\n"
        "if __name__ == '__main__':\n"
        "    got = {}\n"
        "    executor.run_jobs(_where, {k: (k, 'X') for k in 'ab'}, 2, got.__setitem__)\n"
        "    print(os.getpid(), sorted((k, r['ppid']) for k, r in got.items()))\n")
    env = {**os.environ, executor.START_ENV: "spawn", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid is not allowed here: {probe.stderr.decode().strip()}")
    res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "1 [('a', 1), ('b', 1)]"


def _half_build(key: str, folder: str):
    """A job stand-in: "slow" leaves a half-built folder until it is stopped, and removes it
    on the way out as `place_organism` drops an unfinished build; "fast" ends once it exists."""
    import shutil
    import time

    marker = Path(folder) / "half-built"
    if key == "fast":
        while not marker.exists():
            time.sleep(0.02)
        return key
    marker.mkdir()
    try:
        time.sleep(120)
    except BaseException:
        shutil.rmtree(marker)
        (Path(folder) / "cleaned").write_text(str(os.getpid()))
        raise
    return key


def test_a_stopped_pool_lets_the_job_in_flight_clean_up(monkeypatch, tmp_path):
    """A Ctrl-C in the main process terminates the busy workers. SIGTERM killed them outright,
    so a build in flight left its `.<hash>.tmp<pid>` folder in the cache, where the README
    promised that a study's placement removes it."""
    import time

    monkeypatch.delenv(executor.START_ENV, raising=False)

    def interrupted(key, result):
        raise KeyboardInterrupt  # as Ctrl-C would, while "slow" is in flight

    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        executor.run_jobs(_half_build, {k: (k, str(tmp_path)) for k in ("slow", "fast")}, 2, interrupted)
    assert time.perf_counter() - t < 60  # stopped, not waited for
    assert not (tmp_path / "half-built").exists() and (tmp_path / "cleaned").is_file()


def test_ctrl_c_while_the_server_imports_neither_kills_it_nor_prints_a_traceback(monkeypatch, tmp_path, capfd):
    """Ctrl-C reaches the whole process group. The server ignored SIGINT only after its
    imports, so one arriving in its first seconds killed it with a KeyboardInterrupt traceback
    printed over the study's own message; it now starts ignoring SIGINT, and this process's
    own handler is back once it has started."""
    import signal
    import time
    from multiprocessing import forkserver

    (tmp_path / "doublebind_slow_preload.py").write_text("import time\ntime.sleep(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(executor.START_ENV, raising=False)
    monkeypatch.setattr(executor, "PRELOAD", (*executor.PRELOAD, "doublebind_slow_preload"))
    monkeypatch.setenv("DOUBLEBIND_TEST_START", "slow")  # a new server, importing for 2 s more
    handler = signal.getsignal(signal.SIGINT)
    executor.warm_up()
    pid = forkserver._forkserver._forkserver_pid
    assert signal.getsignal(signal.SIGINT) is handler
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn")).split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1)), "the server does not ignore SIGINT while it imports"
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # still alive
    got = _pool()  # and its workers run
    assert {r["ppid"] for r in got.values()} == {pid}
    assert "KeyboardInterrupt" not in capfd.readouterr().err
    monkeypatch.setenv("DOUBLEBIND_TEST_START", "fast")
    monkeypatch.setattr(executor, "PRELOAD", executor.PRELOAD[:-1])


def test_a_killed_fork_server_is_named_not_reported_as_exit_code_255(monkeypatch):
    """A forked worker's exit status comes from the fork server; killed, the server takes its
    workers with it, and multiprocessing reads no status and gives 255. The pool reported
    "exit code 255: it exited without a result"; it now says the server is gone. A later pool
    starts a new server."""
    monkeypatch.delenv(executor.START_ENV, raising=False)
    import time
    from multiprocessing import forkserver

    _pool()
    pid = forkserver._forkserver._forkserver_pid
    with pytest.raises(DoublebindError) as e:
        executor.run_jobs(_kill_server_or_sleep, {"a": ("a", "kill"), "b": ("b", "sleep")}, 2, lambda k, r: None)
    assert str(e.value) == ("the worker process running a died (exit status lost: the fork server that started it "
                            "is gone, killed or crashed, and it died with it); finished runs are kept, rerun to resume")
    for _ in range(100):  # a killed server tears down for a while (its socket closed, not yet a zombie)
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.05)
    assert set(_pool()) == {"a", "b"}


def test_a_server_whose_socket_refuses_as_the_pool_starts_is_replaced(monkeypatch, tmp_path):
    """A fork server killed a moment before a pool starts can still look alive with its socket
    closed: the pool's first worker met "connection refused" and the study stopped with "fork
    server did not start". The pool now starts a new server once and goes on. The refusing
    socket is stood in for by a plain file (connecting to one is refused the same way)."""
    from multiprocessing import forkserver

    monkeypatch.delenv(executor.START_ENV, raising=False)
    _pool()
    server = forkserver._forkserver
    old_pid, old_address = server._forkserver_pid, server._forkserver_address
    closed = tmp_path / "closed-socket"
    closed.write_text("")
    server._forkserver_address = str(closed)
    try:
        got = _pool()
    finally:
        if old_address and os.path.exists(old_address):
            os.unlink(old_address)
    assert set(got) == {"a", "b"}
    assert server._forkserver_pid not in (None, old_pid)
    assert {r["ppid"] for r in got.values()} == {server._forkserver_pid}
    assert not Path(f"/proc/{old_pid}").exists()  # the old server was stopped and reaped


def test_a_server_whose_socket_file_is_gone_is_replaced(monkeypatch):
    """The server's socket file removed under it (a cleaner of /tmp during a long study): the
    first worker cannot connect, and stopping the old server could not remove the file again.
    That raised FileNotFoundError from inside the pool; the pool now starts a new server."""
    from multiprocessing import forkserver

    monkeypatch.delenv(executor.START_ENV, raising=False)
    _pool()
    server = forkserver._forkserver
    old_pid = server._forkserver_pid
    os.unlink(server._forkserver_address)
    got = _pool()
    assert set(got) == {"a", "b"} and {r["ppid"] for r in got.values()} == {server._forkserver_pid} != {old_pid}
    assert set(_pool()) == {"a", "b"}  # and the pools after it start as ever


def test_a_descriptor_limit_is_reported_as_it_is_and_keeps_the_server(monkeypatch):
    """An OSError that is this process's own (too many open files) restarted a healthy fork
    server, and was then reported as "the workers' fork server did not start". It is now
    reported as it is, and the server is the one that ran before."""
    import multiprocessing.context
    from multiprocessing import forkserver

    monkeypatch.delenv(executor.START_ENV, raising=False)
    _pool()
    pid = forkserver._forkserver._forkserver_pid

    def limited(self):
        raise OSError(24, "Too many open files")

    with monkeypatch.context() as m:
        m.setattr(multiprocessing.context.ForkServerProcess, "start", limited)
        with pytest.raises(DoublebindError, match=r"^could not start a worker process \(OSError: \[Errno 24\] Too "
                                                  r"many open files\)$"):
            executor.run_jobs(_where, {"a": ("a", "X"), "b": ("b", "X")}, 2, lambda k, r: None)
    assert forkserver._forkserver._forkserver_pid == pid and Path(f"/proc/{pid}").exists()
    assert {r["ppid"] for r in _pool().values()} == {pid}  # and the next pool forks from it


def test_a_server_reaped_by_other_code_is_replaced(monkeypatch):
    """A fork server that died and was reaped by other code (its pid waited for elsewhere):
    `ensure_running`'s own wait raised ChildProcessError out of the pool. It is replaced."""
    import signal
    from multiprocessing import forkserver

    monkeypatch.delenv(executor.START_ENV, raising=False)
    _pool()
    pid = forkserver._forkserver._forkserver_pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    got = _pool()
    assert set(got) == {"a", "b"} and {r["ppid"] for r in got.values()} == {forkserver._forkserver._forkserver_pid} != {pid}


def test_a_deleted_working_directory_is_named_and_keeps_the_server(monkeypatch, tmp_path):
    """A worker's start reads the working directory; one deleted under the study raised
    FileNotFoundError, which read as a fork server gone: the healthy server was stopped and its
    restart raised the raw error. It is now one error naming the directory, the server kept."""
    from multiprocessing import forkserver

    monkeypatch.delenv(executor.START_ENV, raising=False)
    _pool()
    pid = forkserver._forkserver._forkserver_pid
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(DoublebindError, match=r"^could not start a worker process: the working directory was "
                                              r"deleted; run the study again"):
        executor.run_jobs(_where, {"a": ("a", "X"), "b": ("b", "X")}, 2, lambda k, r: None)
    monkeypatch.chdir(tmp_path)
    assert forkserver._forkserver._forkserver_pid == pid and Path(f"/proc/{pid}").exists()
    assert {r["ppid"] for r in _pool().values()} == {pid}
