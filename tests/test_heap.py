"""`doublebind.heap`: freed memory kept in the process (glibc's trim and mmap thresholds
raised), so a training step stops faulting in fresh pages; the same numbers either way."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from doublebind import heap
from doublebind.errors import DoublebindError
from doublebind.studies.executor import run_jobs

from .conftest import run_cli, tiny_recipe

glibc = pytest.mark.skipif(not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"),
                           reason="the thresholds are glibc's")

# In a fresh interpreter: the heap setting as the CLI applies it, then (1) page faults of a
# step-like pattern, 96 one-MiB buffers written and freed together, after a first round; (2)
# a few steps of the real distiller on the quick organism, and a hash of the weights.
PROBE = textwrap.dedent("""
    import hashlib, json, resource, sys
    from pathlib import Path
    from doublebind import config, heap
    applied = heap.keep_freed_memory()
    import torch
    torch.set_num_threads(1)

    def round_():
        bufs = [torch.ones(1 << 18) for _ in range(96)]  # 96 MiB, each buffer 1 MiB
        del bufs

    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        round_()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

    from doublebind.organisms.models import quiet_transformers
    from doublebind.training.distill import Distiller
    quiet_transformers()
    d = Distiller(Path(sys.argv[1]), config.load(Path(sys.argv[2]), expect="recipe"), None, show_progress=False)
    losses = [d.train_step(s) for s in range(4)]
    h = hashlib.sha256()
    for p in d.model.parameters():
        h.update(p.detach().numpy().tobytes())
    print(json.dumps({"applied": applied, "faults": faults, "losses": losses, "weights": h.hexdigest()}))
""")


@pytest.mark.parametrize("value, expect", [(None, "keep"), ("", "keep"), ("keep", "keep"), (" System ", "system")])
def test_planned(value, expect):
    assert heap.planned({} if value is None else {heap.ENV: value}) == expect


def test_a_bad_setting_is_one_error():
    with pytest.raises(DoublebindError, match=r"DOUBLEBIND_HEAP='fast': expected one of keep, system"):
        heap.planned({heap.ENV: "fast"})


def test_the_cli_refuses_a_bad_setting(monkeypatch):
    monkeypatch.setenv(heap.ENV, "fast")
    r = run_cli("validate", "configs/studies/quick.yaml")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: DOUBLEBIND_HEAP='fast': expected one of keep, system"


def test_a_bad_setting_is_refused_before_workers_start(monkeypatch):
    monkeypatch.setenv(heap.ENV, "fast")
    with pytest.raises(DoublebindError, match="DOUBLEBIND_HEAP"):
        run_jobs(_applied_here, {0: (), 1: ()}, 2, lambda k, r: None)


def _applied_here():
    return heap._applied


@glibc
@pytest.mark.parametrize("value, expect", [("keep", True), ("system", False)])
def test_study_workers_apply_the_setting(monkeypatch, value, expect):
    monkeypatch.setenv(heap.ENV, value)
    got = {}
    run_jobs(_applied_here, {0: (), 1: ()}, 2, got.__setitem__)
    assert got == {0: expect, 1: expect}


@glibc
def test_kept_memory_stops_the_page_faults_and_changes_no_number(quick_organism, tmp_path):
    """The fault count is the mechanism (each fault zeroes a fresh page): with glibc's own
    settings every round hands much of its 96 MiB back and faults it in again (about 5,000 of
    its 24,576 pages a round when this was written; 154-461 kept);
    kept, the second round reuses the first's pages. The weights after four distillation
    steps are bit-identical."""
    org, _ = quick_organism
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(tiny_recipe({}, training={"steps": 4, "batch": 16, "lr": 1e-3},
                                             prompts={"size": 64}).model_dump(mode="json")))
    out = {}
    for value in ("keep", "system"):
        env = {**os.environ, heap.ENV: value, "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-c", PROBE, str(org), str(recipe)], capture_output=True, text=True,
                           env=env, check=True)
        out[value] = json.loads(r.stdout.strip().splitlines()[-1])
    keep, system = out["keep"], out["system"]
    assert keep["applied"] is True and system["applied"] is False
    assert keep["faults"] < 1_000 and system["faults"] > max(2_000, 4 * keep["faults"]), (keep, system)
    assert keep["losses"] == system["losses"]
    assert keep["weights"] == system["weights"]
