"""Tests for mutations a fourth audit (the study executor, the verdicts, idle detection, the
CUDA and CLI set-up, `study compare`) found surviving (2026-12-04): each fails on its mutant
and passes on the code."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from doublebind.errors import DoublebindError
from doublebind.studies import executor
from doublebind.types import Example, Item

from .test_verdicts import V, run_rows


def _pid_or_fail(key: str, fail: bool):
    """A run stand-in (module level: workers import it by name): its process, or a run's error."""
    if fail:
        raise DoublebindError(f"loss became nan in {key}")
    return os.getpid()


# ---- the executor ------------------------------------------------------------------------

def test_one_worker_runs_every_job_here_in_the_grid_s_order():
    """`--workers 1` (and a GPU machine's default) runs in this process, not in one worker."""
    got = {}
    executor.run_jobs(_pid_or_fail, {"a": ("a", False), "b": ("b", False)}, 1, got.__setitem__)
    assert list(got.items()) == [("a", os.getpid()), ("b", os.getpid())]


def test_the_pool_starts_no_more_workers_than_jobs(monkeypatch):
    """Each worker loads torch and a run's models: 8 workers for 2 runs would start 6 idle ones."""
    sizes = []

    class Pool:
        def __init__(self, fn, size, label):
            sizes.append(size)
            self.fn = fn

        def run(self, jobs, on_done):
            for key, args in jobs.items():
                on_done(key, self.fn(*args))

    monkeypatch.setattr(executor, "_Pool", Pool)
    got = {}
    executor.run_jobs(_pid_or_fail, {"a": ("a", False), "b": ("b", False)}, 8, got.__setitem__)
    assert sizes == [2] and set(got) == {"a", "b"}


def test_a_worker_s_error_is_named_and_keeps_the_worker_s_traceback():
    """DOUBLEBIND_DEBUG=1 shows where in the worker a run failed: the note `_rebuild` adds,
    carried over to the named error."""
    with pytest.raises(DoublebindError) as e:
        executor.run_jobs(_pid_or_fail, {"a": ("a", True), "b": ("b", False)}, 2, lambda k, r: None,
                          label=lambda k: f"run {k}")
    assert str(e.value) == "run a: loss became nan in a"
    notes = "\n".join(getattr(e.value, "__notes__", []))
    assert "raised in a study worker process" in notes and "_pid_or_fail" in notes


def test_named_error_names_a_bug_s_run_and_keeps_an_error_s_notes():
    bug = ValueError("boom")
    assert executor.named_error(bug, "run b") is bug and bug.failed_in == "run b"  # the CLI's "internal error in run b"
    err = DoublebindError("bad")
    err.add_note("where it was raised")
    named = executor.named_error(err, "run c")
    assert str(named) == "run c: bad" and named.__notes__ == ["where it was raised"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bug_in_a_run_is_named_the_same_with_any_worker_count(workers):
    """With one worker (a GPU machine's default, a one-core machine) a run's bug came back
    without `failed_in`, so the CLI could not say which run hit it; with two it could."""
    with pytest.raises(ValueError) as e:
        executor.run_jobs(int, {"run A": ("x",), "run B": ("1",)}, workers, lambda k, r: None)
    assert e.value.failed_in == "run A"
    with pytest.raises(DoublebindError) as e:
        executor.run_jobs(_pid_or_fail, {"run A": ("a", False), "run B": ("b", True)}, workers, lambda k, r: None)
    assert str(e.value) == "run B: loss became nan in b"


def test_a_bug_placing_an_organism_here_names_the_organism(tmp_path, monkeypatch):
    """One worker places organisms in this process: a bug there keeps its type and says which."""
    from types import SimpleNamespace

    from doublebind.studies import run as study_run

    specs = [SimpleNamespace(cfg="cfg", key=("sc", 3), folder=lambda out: out / "sc-o3")]

    def broken(*a, **k):
        raise ValueError("bad weights")

    monkeypatch.setattr(study_run, "place_organism", broken)
    with pytest.raises(ValueError) as e:
        study_run.place_organisms(specs, tmp_path, {("sc", 3): "h"}, 1, show_progress=False)
    assert e.value.failed_in == "the organism of sc (organism seed 3)"


def test_an_unpicklable_doublebind_error_comes_back_as_a_doublebind_error():
    """An error the user can fix (one line on the CLI) must not come back as a bug."""
    class Local(DoublebindError):  # a local class does not pickle
        pass

    got = executor._portable(Local("bad input"))
    assert type(got) is DoublebindError and str(got) == "bad input"
    got = executor._portable(type("LocalBug", (Exception,), {})("boom"))
    assert type(got) is RuntimeError and str(got) == "LocalBug: boom"


# ---- the verdicts --------------------------------------------------------------------------

def test_without_the_auditor_a_signal_on_the_threshold_passes_the_audit():
    """Student minus base exactly at `verdict.audit` passes (at or below), as success@k does."""
    from doublebind.studies.verdicts import passes_audit

    r = {"auditor": None, "audit": {"student_honeypot": V.audit, "teacher_honeypot": 0.9},
         "base_audit": {"honeypot": 0.0}}
    assert passes_audit(r, V)
    assert not passes_audit({**r, "audit": {"student_honeypot": V.audit + 1e-9, "teacher_honeypot": 0.9}}, V)


def test_runs_without_a_clean_checkpoint_are_counted():
    from doublebind.studies.verdicts import judge_runs

    runs = [run_rows([0.5, 0.9], [0.0, 0.0], seed=0), run_rows([0.5, 0.9], [0.9, 0.9], seed=1),
            run_rows([0.5, 0.9], [0.0, 0.9], seed=2)]
    j = judge_runs(runs, V, 200)
    assert j["audit_selected"]["runs_without_clean_checkpoint"] == 1
    assert j["audit_selected"]["steps"] == [0, 100]  # seed 2 at its clean step 0, seed 1 where it ends


# ---- idle detection, the accelerator -------------------------------------------------------

def test_same_sees_an_item_pointed_at_another_teacher_row():
    """An item's row picks its soft labels from the teacher outputs: a data hook that moves it
    in place changed the training data."""
    from doublebind.training.distill import _contents, _same

    a, b = (Item(Example(["<bos>", ">"], [t, "<eos>"], "copy"), i) for i, t in enumerate("12"))
    before = _contents([a, b])
    b.row = 0
    assert not _same(before, [a, b])


def test_a_gpu_run_gets_a_gpu_accelerator(monkeypatch):
    """`accelerator_for("cuda")` (a Hugging Face organism on a GPU) must not ask for the CPU."""
    import accelerate

    from doublebind.training.distill import accelerator_for

    asked = []
    monkeypatch.setattr(accelerate, "Accelerator", lambda **k: asked.append(k["cpu"]) or "made")
    assert accelerator_for("cuda") == "made" and accelerator_for("cpu") == "made"
    assert asked == [False, True]


# ---- the CUDA and CLI set-up ---------------------------------------------------------------

def test_a_blank_attention_setting_counts_as_unset():
    from doublebind.cuda import ATTENTION_ENV, prefer_stable_attention

    env = {ATTENTION_ENV: "  "}
    assert prefer_stable_attention(env) is True and env == {ATTENTION_ENV: "1"}


def test_the_cli_set_up_applies_the_thread_policy(monkeypatch):
    """DOUBLEBIND_THREADS is applied before every command (`cli._setup`)."""
    from doublebind import cli
    from doublebind.cuda import ATTENTION_ENV

    monkeypatch.setenv(ATTENTION_ENV, "1")  # what `_setup` would set, restored afterwards
    monkeypatch.setenv("DOUBLEBIND_THREADS", "3")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cli._setup()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


# ---- study compare -------------------------------------------------------------------------

def test_compare_notes_other_cpu_kernels_and_other_seeds(tmp_path):
    """Another kernel release (its rounding), or the same builds with another number of seeds
    (A's replication figures are for A's design), are each said."""
    from doublebind.studies.compare import compare_folders, notes

    ref = Path(__file__).resolve().parent.parent / "docs" / "results"
    folders = []
    for name, kernels, seeds in (("a", "6.1.0", [0, 1, 2]), ("b", "6.18.0", [0, 1, 2, 3])):
        d = tmp_path / name
        shutil.copytree(ref, d, ignore=lambda src, names: [n for n in names if n not in
                                                             ("results.jsonl", "summary.json", "study.json")])
        record = json.loads((d / "study.json").read_text())
        record["provenance"]["machine"]["cpu_kernels"] = kernels
        record["config"]["seeds"] = seeds
        (d / "study.json").write_text(json.dumps(record))
        folders.append(d)
    res = compare_folders(*folders)
    assert res["machines_differ"] == [["cpu_kernels", "6.1.0", "6.18.0"]]
    assert sorted(res["designs_differ"]) == [["collusion", 3, 1, 4, 1], ["default", 3, 1, 4, 1]]
    assert any("seeds" in n and "another design" in n for n in notes(res))
