"""Input the CLI can check without torch is checked before torch is imported (seconds of
start-up), so a missing file or a malformed config is one error line in well under a second
of work, not after the training stack has loaded."""

import subprocess
import sys

import pytest

# Runs one command in a fresh interpreter, then reports its exit status and whether torch got imported.
PROBE = """
import sys
from doublebind.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code
print("exit", code, "torch", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args, message", [
    (["distill", "--organism", "{tmp}/org", "--recipe", "{tmp}/missing.yaml", "--out", "{tmp}/o"],
     "config file not found"),
    (["distill", "--organism", "{tmp}/org", "--recipe", "{tmp}/bad.yaml", "--out", "{tmp}/o"], "not valid YAML"),
    (["study", "run", "{tmp}/bad.yaml", "--out", "{tmp}/o"], "not valid YAML"),
    (["organism", "build", "--preset", "nosuch", "--out", "{tmp}/o"], "unknown preset 'nosuch'"),
    (["organism", "build", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/o"], "config file not found"),
    (["eval", "{tmp}/no-checkpoint"], "no checkpoint folder"),
    (["eval", "{tmp}", "--n", "0"], "--n must be between"),
    (["study", "run", "{tmp}/typo.yaml", "--out", "{tmp}/o"], "techniqes: unknown key"),
    (["validate", "{tmp}/typo.yaml"], "techniqes: unknown key"),
    (["report", "{tmp}/no-study"], "no-study: no such folder"),
    (["report", "{tmp}"], "no results.jsonl"),
    # an empty value (an unset shell variable) used to mean the current folder
    (["study", "run", "{tmp}/typo.yaml", "--out", ""], "an empty argument after --out"),
    (["distill", "--organism", "{tmp}/org", "--recipe", "{tmp}/r.yaml", "--out="], "an empty argument after --out"),
    (["report", " "], "an empty argument as argument 2"),
])
def test_bad_input_fails_in_one_line_before_torch_is_imported(tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("kind: recipe\nname: [\n")
    (tmp_path / "typo.yaml").write_text("kind: study\nname: t\nscenarios: [default]\nrecipe: r.yaml\n"
                                        "techniqes: [baseline]\nseeds: [0]\n")
    argv = [a.format(tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
    assert res.stdout.strip().endswith("exit 1 torch False"), (res.stdout, res.stderr[-1000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


@pytest.mark.parametrize("env", [{"DOUBLEBIND_THREADS": "1"}, {"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0"}])
def test_a_thread_policy_does_not_load_torch_before_the_checks(tmp_path, env):
    """With a thread count to set (DOUBLEBIND_THREADS, or a parallel launcher's), bad input
    is still refused before torch loads."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DOUBLEBIND_THREADS")} | env
    for args in (["validate", str(tmp_path / "missing.yaml")], ["report", str(tmp_path)]):
        res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env)
        assert res.stdout.strip().endswith("exit 1 torch False"), (args, res.stdout, res.stderr[-1000:])


def test_the_thread_count_is_set_when_torch_loads_later():
    """The policy set before torch loads takes effect when it does, even after a library has
    looked torch up without loading it (transformers checks whether it is installed)."""
    import os

    n = (os.cpu_count() or 1) + 1  # never torch's default, which is at most the core count
    code = ("import importlib.util, sys\n"
            "from doublebind.threads import apply_thread_policy\n"
            f"assert apply_thread_policy() == {n} and 'torch' not in sys.modules\n"
            "assert importlib.util.find_spec('torch') is not None and 'torch' not in sys.modules\n"
            "import pickle, transformers, torch\n"
            "pickle.dumps(torch.__spec__)\n"  # the loader is left as it was
            "print(torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"DOUBLEBIND_THREADS": str(n)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.split() == [str(n)], (res.stdout, res.stderr[-1000:])


def test_the_probe_sees_torch_when_a_command_loads_it(tmp_path):
    """The check above can fail: a command that gets past its checks does import torch."""
    res = subprocess.run([sys.executable, "-c", PROBE, "eval", str(tmp_path)], capture_output=True, text=True)
    assert "torch True" in res.stdout, (res.stdout, res.stderr[-1000:])
