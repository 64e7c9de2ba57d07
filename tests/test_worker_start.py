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
    runs here), and two to build go to the pool."""
    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "cache"))
    for h, card in {"aaa": {"verified": True}, "bbb": {"verified": True}, "ccc": {"verified": False}}.items():
        (tmp_path / "cache" / "organisms" / h).mkdir(parents=True)
        (tmp_path / "cache" / "organisms" / h / "organism.json").write_text(json.dumps(card))
    (tmp_path / "cache" / "organisms" / "ddd").mkdir()
    (tmp_path / "cache" / "organisms" / "ddd" / "organism.json").write_text("{not json")
    assert [study_run._cached(h) for h in ("aaa", "bbb", "ccc", "ddd", "eee")] == [True, True, False, False, False]

    here, pooled = [], []
    monkeypatch.setattr(study_run, "place_organism", lambda cfg, dest, *a, **k: here.append(cfg))
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
