"""The thread policy (doublebind.threads) and progress off a terminal (doublebind.ui)."""

from __future__ import annotations

import contextlib
import io
import time

import pytest

from doublebind import threads, ui
from doublebind.errors import DoublebindError


@pytest.mark.parametrize("env, cores, expect", [
    ({}, 8, None),  # one process: torch's default
    ({"DOUBLEBIND_THREADS": "auto"}, 8, None),
    ({"DOUBLEBIND_THREADS": "3"}, 8, 3),  # set: wins over everything
    ({"DOUBLEBIND_THREADS": "1", "OMP_NUM_THREADS": "4", "LOCAL_WORLD_SIZE": "2"}, 8, 1),
    ({"OMP_NUM_THREADS": "2"}, 8, None),  # torch reads it itself
    ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),  # accelerate launch / torchrun: cores / processes
    ({"LOCAL_WORLD_SIZE": "4"}, 16, 4),
    ({"LOCAL_WORLD_SIZE": "8"}, 2, 1),  # never below one
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, 2, 1),
    ({"WORLD_SIZE": "2"}, 8, None),  # WORLD_SIZE alone is not a launcher here
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 4, 2),
    ({"SLURM_NTASKS_PER_NODE": "2(x3)"}, 4, 2),
])
def test_planned_threads(env, cores, expect):
    assert threads.planned_threads(env, cores)[0] == expect


@pytest.mark.parametrize("env, rank", [
    ({}, 0),
    ({"RANK": "3"}, 3),  # torchrun, accelerate launch
    ({"OMPI_COMM_WORLD_RANK": "1"}, 1),  # an Open MPI launch sets no RANK: every process read 0
    ({"PMI_RANK": "2", "OMPI_COMM_WORLD_RANK": "1"}, 2),  # accelerate's order
    ({"MV2_COMM_WORLD_RANK": "5"}, 5),
    ({"RANK": "", "PMI_RANK": "1"}, 1),
])
def test_launcher_rank_reads_what_accelerate_reads(env, rank):
    """Only rank 0 sets an earlier run aside under `distill --force`: under MPI, RANK is unset
    until accelerate's state is built, so every process would have tried."""
    assert threads.launcher_rank(env) == rank


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_thread_setting_is_one_error(value):
    with pytest.raises(DoublebindError, match="DOUBLEBIND_THREADS"):
        threads.planned_threads({"DOUBLEBIND_THREADS": value})


def test_apply_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the suite's workers already run one thread each
        assert threads.apply_thread_policy({"DOUBLEBIND_THREADS": "1"}) == 1
        assert torch.get_num_threads() == 1
        assert threads.apply_thread_policy({"DOUBLEBIND_THREADS": "3"}) == 3 and torch.get_num_threads() == 3
        torch.set_num_threads(2)
        assert threads.apply_thread_policy({"OMP_NUM_THREADS": "1"}) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_progress_off_a_terminal_prints_status_and_a_long_run_estimate(monkeypatch):
    monkeypatch.setattr(ui, "FIRST_REPORT_S", 0.2)
    monkeypatch.setattr(ui, "LONG_RUN_S", 60.0)
    monkeypatch.setenv("DOUBLEBIND_PROGRESS_EVERY", "1")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with ui.progress_bar("training base", 1_000_000) as advance:
            deadline = time.monotonic() + 1.6
            while time.monotonic() < deadline:
                advance(1)
                time.sleep(0.01)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("note: training base will take about ") and "1,000,000 steps" in lines[0]
    assert any(ln.startswith("training base: ") and "/1,000,000 steps" in ln and "left" in ln for ln in lines[1:])


def test_the_estimate_leaves_out_what_came_before_the_first_unit(monkeypatch):
    """The rate counted the set-up before the first step (loading, data): a two-minute
    organism build was announced as twelve minutes."""
    clock = [100.0]
    monkeypatch.setattr(ui.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ui, "LONG_RUN_S", 60.0)
    t = ui._Tracker("training base", 10_000, "steps")
    clock[0] += 20.0  # set-up: 20 s before the first step ends
    t.advanced(1)
    assert t.estimate_line() is None and t.left() is None  # one unit: no rate yet
    for _ in range(1_000):  # then 0.01 s a step
        clock[0] += 0.01
        t.advanced(1)
    assert t.per_unit() == pytest.approx(0.01) and t.left() == pytest.approx(0.01 * 8_999)
    assert t.estimate_line() is None  # 10 s of steps after 20 s of set-up: not yet
    for _ in range(1_100):
        clock[0] += 0.01
        t.advanced(1)
    line = t.estimate_line()  # 79 s left at 0.01 s a step (counting the set-up: 0.02 s, 2 min 36 s)
    assert line.startswith("note: training base will take about 1 min 19 s more") and "at 0.01 s each" in line, line


def test_parallel_units_that_end_together_do_not_use_up_the_estimate(monkeypatch):
    """With 4 workers the first runs end within seconds of each other: their rate alone said
    a 26-minute study had seconds left, and the one estimate was spent on it."""
    clock = [0.0]
    monkeypatch.setattr(ui.time, "monotonic", lambda: clock[0])
    t = ui._Tracker("study", 100, "runs")
    for end in (60.0, 61.0, 62.0, 63.0):  # the first wave of four 60-s runs
        clock[0] = end
        t.advanced(1)
        assert t.estimate_line() is None
    for end in (121.0, 122.0, 123.0, 124.0):  # the second wave
        clock[0] = end
        t.advanced(1)
    line = t.estimate_line()  # 92 runs left at 64/7 s a run (the true rate, 4 per 60 s, says 23 min): long either way
    assert line is not None and line.startswith("note: study will take about 14 min 01 s more"), line


def test_short_work_prints_nothing(monkeypatch):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with ui.progress_bar("quick", 10) as advance:
            advance(10)
    assert err.getvalue() == ""
