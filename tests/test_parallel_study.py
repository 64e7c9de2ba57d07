"""Studies in worker processes (doublebind.studies.executor): the same numbers as one run at
a time, resumable after a kill, no orphan workers, and a failing run reported as in-process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from doublebind.errors import DoublebindError
from doublebind.studies import executor
from doublebind.studies import run as study_run

from .test_study import write_study

TECHNIQUES = ["baseline", "verifier_filter", "distill_and_audit"]  # plain, a data filter, a checkpoint stage


def _study(root, organism_dir):
    return write_study(root, organism_dir, techniques=TECHNIQUES)


@pytest.fixture(scope="module")
def single(quick_organism, tmp_path_factory):
    """The tiny study run one run at a time, in this process: (study file, folder)."""
    root = tmp_path_factory.mktemp("single")
    path = _study(root, quick_organism[0])
    study_run.run_study(path, root / "out", show_progress=False, workers=1)
    return path, root / "out"


def _numbers(x, prefix=""):
    """Every number in a nested row, by its path."""
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _numbers(val, f"{prefix}{key}.").items()}
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return {prefix.rstrip("."): x}
    return {}


def _by_cell(out):
    return {(r["technique"], r["seed"], r["step"]): r for r in study_run.read_results(out / study_run.RESULTS)}


def test_rows_say_what_the_stages_kept_against_the_world_s_truth(single):
    """Each row carries the teacher's items where the behaviour acts and the others, [before,
    kept]: all of them under the plain baseline, none of the behaviour's under the verifier
    filter (`harm`'s marker fails the verifier), and as many as the run trained on."""
    _, out = single
    rows = study_run.read_results(out / study_run.RESULTS)
    assert all(set(r["data"]) == {"behaviour_items", "other_items"} for r in rows)
    for r in rows:
        (bn, bk), (on, ok) = r["data"]["behaviour_items"], r["data"]["other_items"]
        [run] = (out / "runs").glob(f"*/{r['technique']}-s{r['seed']}/summary.json")
        data = json.loads(run.read_text())["data"]
        assert bn + on == data["n_prompts"] and bk + ok == data["n_train_items"]
        if r["technique"] == "baseline":
            assert (bk, ok) == (bn, on)
        if r["technique"] == "verifier_filter":
            assert bk == 0 and 0 < ok <= on
    assert sum(r["data"]["behaviour_items"][0] for r in rows if r["technique"] == "verifier_filter") > 0


def test_two_workers_give_the_numbers_of_one_run_at_a_time(single, tmp_path):
    path, ref = single
    out = tmp_path / "out"
    study_run.run_study(path, out, show_progress=False, workers=2)
    a, b = _by_cell(ref), _by_cell(out)
    assert set(a) == set(b) and len(a) == len(TECHNIQUES) * 2 * 3
    for cell in a:
        na, nb = _numbers(a[cell]), _numbers(b[cell])
        assert set(na) == set(nb), cell
        for k in na:
            assert nb[k] == pytest.approx(na[k], abs=1e-5), (cell, k)
        assert a[cell]["selected"] == b[cell]["selected"]
    for t in TECHNIQUES:  # the training losses, from each run's own summary
        for s in (0, 1):
            [fa] = (ref / "runs").glob(f"*/{t}-s{s}/summary.json")
            [fb] = (out / "runs").glob(f"*/{t}-s{s}/summary.json")
            la, lb = json.loads(fa.read_text())["losses"], json.loads(fb.read_text())["losses"]
            assert lb["first"] == pytest.approx(la["first"], abs=1e-5) and lb["last"] == pytest.approx(la["last"], abs=1e-5)
    # the study's output does not depend on the degree of parallelism
    assert (out / "summary.json").read_bytes() == (ref / "summary.json").read_bytes()


def _job(key: str, delay: float, failed: str | None = None):
    """A run stand-in for the executor test: fails for key 'bad' (first touching `failed`),
    else reports its process; 'slow' first waits until 'bad' has failed, so it is in flight
    then however late each worker process starts on a busy machine; 'late' waits as 'slow'
    does, then fails too."""
    import torch

    if key in ("slow", "late"):
        deadline = time.monotonic() + 120
        while not os.path.exists(failed) and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(delay)
    if key == "die":
        os._exit(3)  # what the OOM killer or a segfault looks like from outside
    if key == "orphan":  # a process the run forked outlives it, holding the worker's pipe
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        with open(failed, "w") as f:
            f.write(str(child))
        os._exit(7)
    if key == "bad":
        open(failed, "w").close()
        raise DoublebindError(f"loss became nan at step 3 (process {os.getpid()})")
    if key == "late":
        raise DoublebindError("a second failure, after the first")
    return os.getpid(), torch.get_num_threads()


def test_a_failing_or_dead_worker_is_raised_and_finished_runs_are_handed_over(tmp_path):
    done = {}
    failed = str(tmp_path / "bad-failed")
    jobs = {"slow": ("slow", 1.0, failed), "bad": ("bad", 0.0, failed), "never": ("never", 0.0)}
    with pytest.raises(DoublebindError) as e:
        executor.run_jobs(_job, jobs, 2, lambda k, r: done.__setitem__(k, r))
    assert re.fullmatch(r"bad: loss became nan at step 3 \(process \d+\)", str(e.value))  # the CLI's line, naming the job
    # 'slow', in flight when 'bad' failed, is handed over; nothing new starts after a failure
    assert set(done) == {"slow"}
    pid, threads = done["slow"]
    bad_pid = int(str(e.value).split("process ")[1].rstrip(")"))
    assert len({os.getpid(), pid, bad_pid}) == 3  # two worker processes, not this one
    assert threads == 1
    with pytest.raises(DoublebindError) as e:
        executor.run_jobs(_job, {("t", 0): ("die", 0.0), ("t", 1): ("ok", 0.5)}, 2, done.__setitem__,
                          label=lambda k: f"{k[0]} seed {k[1]}")
    assert str(e.value) == ("the worker process running t seed 0 died (exit code 3: it exited without a result); "
                            "finished runs are kept, rerun to resume")
    assert ("t", 1) in done
    # two failures: the first in the grid's order is raised, whichever ends first
    failed2 = str(tmp_path / "bad-failed-2")
    with pytest.raises(DoublebindError, match=r"^bad: loss became nan at step 3"):
        executor.run_jobs(_job, {"bad": ("bad", 0.0, failed2), "late": ("late", 0.2, failed2)}, 2, done.__setitem__)
    failed3 = str(tmp_path / "bad-failed-3")  # here the later job ('late', 0.2 s after 'bad') is first in the grid
    with pytest.raises(DoublebindError, match=r"^late: a second failure, after the first"):
        executor.run_jobs(_job, {"late": ("late", 0.2, failed3), "bad": ("bad", 0.0, failed3)}, 2, done.__setitem__)
    # one worker: the same naming, in this process
    with pytest.raises(DoublebindError, match=r"^bad: loss became nan at step 3"):
        executor.run_jobs(_job, {"bad": ("bad", 0.0, str(tmp_path / "bad-failed-4"))}, 1, done.__setitem__)


def test_a_result_the_main_process_refuses_stops_the_study_but_the_runs_in_flight_finish(tmp_path):
    """`on_done` raising for one run (its rows refused, a full disk under results.jsonl) had
    terminated the other worker's run mid-way; it now finishes and is handed over, and nothing
    new starts."""
    done = []

    def on_done(key, result):
        if key == "refused":
            raise DoublebindError("refused: its rows hold a NaN")
        done.append(key)

    jobs = {"refused": ("ok", 0.0), "in flight": ("ok", 1.0), "never": ("ok", 0.0)}
    with pytest.raises(DoublebindError, match="^refused: its rows hold a NaN$"):
        executor.run_jobs(_job, jobs, 2, on_done)
    assert done == ["in flight"]


def test_a_worker_that_dies_while_a_process_it_forked_holds_its_pipe_is_reported_at_once(tmp_path):
    """The pool read the dead worker's pipe, and waited until the process it forked (60 s
    here) closed it too, while the other worker's finished run waited to be collected."""
    pid_file = str(tmp_path / "orphan.pid")
    done, start = {}, time.monotonic()
    try:
        with pytest.raises(DoublebindError, match=r"^the worker process running o died \(exit code 7"):
            executor.run_jobs(_job, {"o": ("orphan", 0.0, pid_file), "k": ("ok", 0.5)}, 2, done.__setitem__)
        assert time.monotonic() - start < 30 and "k" in done
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(Path(pid_file).read_text()), signal.SIGKILL)


def test_worker_count_policy():
    assert executor.workers_for(None, {}, cores=4, cuda=False) == 4
    assert executor.workers_for(None, {}, cores=4, cuda=True) == 1
    assert executor.workers_for(None, {"DOUBLEBIND_WORKERS": "3"}, cores=4, cuda=False) == 3
    assert executor.workers_for(2, {"DOUBLEBIND_WORKERS": "3"}, cores=4, cuda=False) == 2
    assert executor.workers_for(4, {"LOCAL_WORLD_SIZE": "2"}, cores=4, cuda=False) == 1  # accelerate launch
    for bad in ("0", "-1", "two"):
        with pytest.raises(DoublebindError, match="expected a whole number of worker processes >= 1"):
            executor.workers_for(None, {"DOUBLEBIND_WORKERS": bad}, cores=4, cuda=False)
    # 10**20 was taken: the pool would start as many processes as the grid has runs
    assert executor.workers_for(executor.MAX_WORKERS, {}, cores=4, cuda=False) == executor.MAX_WORKERS
    with pytest.raises(DoublebindError, match=r"^--workers=100000000000000000000: at most 256 worker processes"):
        executor.workers_for(10**20, {}, cores=4, cuda=False)


def _children(pid: int) -> set[int]:
    """Every process below `pid`: workers forked from the fork server are its grandchildren,
    and the server itself must go too."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    below, grew = set(), True
    while grew:
        more = {p for p, pp in parent_of.items() if (pp == pid or pp in below) and p not in below}
        below |= more
        grew = bool(more)
    return below


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gone(pids, within=15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def _start(cmd):
    # SIGINT as a terminal leaves it: a shell's background job (`make test &`) starts with
    # SIGINT ignored, and Python then never raises KeyboardInterrupt, so the Ctrl-C below
    # would do nothing and the study would run to its end.
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop_after_first_run(cmd, results, how):
    """Start the study, let at least one run finish, stop it `how`; the worker pids."""
    runs_before = len(study_run.scan_results(results).runs) if results.exists() else 0
    proc = _start(cmd)
    workers, deadline = set(), time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _children(proc.pid)
        if results.exists() and len(study_run.scan_results(results).runs) > runs_before:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the study ended before it could be stopped: {proc.stderr.read()[-500:]}"
    workers |= _children(proc.pid)
    assert len(workers) >= 2
    if how == "sigkill":
        os.kill(proc.pid, signal.SIGKILL)  # the main process alone: its workers must notice
    else:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert rc == (-signal.SIGKILL if how == "sigkill" else 130), err[-1000:]
    if how == "ctrl_c":
        assert "interrupted" in err and "Traceback" not in err, err[-1000:]
    assert _gone(workers), f"worker processes outlived the study ({how})"


def test_stopped_parallel_study_leaves_no_workers_and_resumes(single, tmp_path):
    """Ctrl-C, then SIGKILL of the main process; then a resume with two workers redoes only
    the missing runs and ends with the summary of the uninterrupted study."""
    path, ref = single
    out = tmp_path / "out"
    results = out / study_run.RESULTS
    cmd = [sys.executable, "-m", "doublebind", "study", "run", str(path), "--out", str(out), "--workers", "2"]
    _stop_after_first_run(cmd, results, "ctrl_c")
    _stop_after_first_run(cmd, results, "sigkill")
    before = study_run.scan_results(results)
    assert 2 <= len(before.runs) < len(TECHNIQUES) * 2 and before.ignored_rows == 0
    kept = before.rows
    study_run.run_study(path, out, show_progress=False, workers=2)
    after = study_run.scan_results(results)
    assert len(after.runs) == len(TECHNIQUES) * 2 and after.ignored_rows == 0 and not after.incomplete
    assert after.rows[: len(kept)] == kept  # finished runs kept as they were, none redone
    assert (out / "summary.json").read_bytes() == (ref / "summary.json").read_bytes()


def test_a_failing_run_prints_the_same_error_line_with_workers(quick_organism, tmp_path):
    """A NaN loss in a worker ends `study run` with the line it prints without workers."""
    from .conftest import run_cli

    path = _study(tmp_path, quick_organism[0])
    nan = "recipe_overrides.training.lr=1e30"
    with pytest.raises(DoublebindError) as e:
        study_run.run_study(path, tmp_path / "w1", show_progress=False, workers=1, overrides=[nan])
    # the loss, or before it the gradient norm (whose clipping made the weights nan at the next step)
    assert re.match(r"\w+ seed 0 on \w+ \(organism seed 0\): (loss|gradient norm) became nan at step \d+; lower the "
                    r"learning rate \(training.lr; in a study, recipe_overrides.training.lr\)", str(e.value)), str(e.value)
    res = run_cli("study", "run", str(path), "--out", str(tmp_path / "w2"), "--workers", "2", nan)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")] == [f"error: {e.value}"]
    res = run_cli("study", "run", str(path), "--out", str(tmp_path / "w0"), "--workers", "0")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "error: --workers='0': expected a whole number of worker processes >= 1"]


def test_on_a_gpu_machine_only_studies_of_hugging_face_organisms_take_one_worker(quick_organism, tmp_path,
                                                                                  monkeypatch):
    """The embedded world trains on the CPU, yet on a GPU machine its studies ran one worker on
    one thread: 1 of 16 cores (a review of the GPU paths)."""
    import torch

    from doublebind import config

    seen = []

    def fake_workers_for(requested=None, environ=os.environ, cores=None, cuda=None):
        seen.append(cuda)
        raise DoublebindError("stop here")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(executor, "workers_for", fake_workers_for)
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    with pytest.raises(DoublebindError, match="stop here"):
        study_run.run_study(path, tmp_path / "out", show_progress=False, workers=None)
    assert seen == [False]  # the quick organism, built: its card says it is the embedded world's
    world = study_run.OrganismSpec("default", 0, None, cfg=config.load(preset="default", expect="organism"))
    assert not world.on_gpu and not study_run.OrganismSpec("quick", 0, None, path=quick_organism[0]).on_gpu
    from .test_llm_organism import organism_yaml

    (tmp_path / "hf").mkdir()
    assert study_run.OrganismSpec("tiny-owl", 0, None, cfg=config.load(organism_yaml(tmp_path / "hf"))).on_gpu
