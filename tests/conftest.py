import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

# `make test` runs the suite in worker processes (pytest-xdist, `-n`), one torch thread each:
# two processes that each take every core slow each other several-fold (doublebind.threads).
# Subprocesses the tests start inherit the setting.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# With workers, the quick organism (the suite's one long build) is built once, by a process the
# main pytest process starts before the workers, while the workers run the tests that do not
# need it (those are ordered first). The variable names the folder it builds into.
QUICK_DIR_ENV = "DOUBLEBIND_TEST_QUICK_DIR"
if XDIST_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if os.environ.get(QUICK_DIR_ENV):
        os.nice(5)  # the shared quick build (below) goes first: every test that needs it waits for it

from doublebind import config  # noqa: E402
from doublebind.organisms.models import quiet_transformers  # noqa: E402

quiet_transformers()
if XDIST_WORKER:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

_QUICK_BUILD = """
import sys, traceback
from pathlib import Path
from doublebind import config
from doublebind.organisms.build import build_organism
root = Path(sys.argv[1])
def status(text):  # whole or absent: the workers poll for it
    (root / "status.tmp").write_text(text)
    (root / "status.tmp").replace(root / "status")
try:
    build_organism(config.load(preset="quick"), show_progress=False)  # into the cache only
except BaseException as e:
    traceback.print_exc()
    status(f"failed: {type(e).__name__}: {e}")
    raise
status("ok")
"""


def _reap(proc, root: Path) -> None:
    """Wait for the build process (so it never lingers as a zombie) and leave a status even
    when it died without writing one."""
    code = proc.wait()
    if not (root / "status").is_file():
        (root / "status").write_text(f"failed: exit status {code}")


def _xdist_workers(cfg) -> int:
    try:
        return int(cfg.getoption("numprocesses") or 0)
    except (ValueError, TypeError):
        return 0


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Main process of a run with workers: start the quick organism's build (one thread)."""
    cfg = session.config
    if XDIST_WORKER or hasattr(cfg, "workerinput") or _xdist_workers(cfg) < 2 or os.environ.get(QUICK_DIR_ENV):
        return
    root = cfg._tmp_path_factory.mktemp("quick-shared")
    env = {**os.environ, "DOUBLEBIND_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "DOUBLEBIND_THREADS": "1"}
    with open(root / "build.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _QUICK_BUILD, str(root)], env=env, stdout=log, stderr=log)
    cfg._quick_build = proc
    threading.Thread(target=_reap, args=(proc, root), daemon=True).start()
    os.environ[QUICK_DIR_ENV] = str(root)


def pytest_unconfigure(config):
    proc = getattr(config, "_quick_build", None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait()


def pytest_collection_modifyitems(config, items):
    """With workers, tests that need the quick organism run last (a stable sort, the same in
    every worker), so its build overlaps the rest."""
    if XDIST_WORKER:
        items.sort(key=lambda item: "quick_organism" in getattr(item, "fixturenames", ()))


def _wait_for_shared_quick(root: Path) -> Path:
    """The organism cache the main process's build left in `root`, once it is there (the
    main process writes a status when the build ends, whatever way it ends)."""
    while not (root / "status").is_file():
        time.sleep(1)
    status = (root / "status").read_text()
    if status != "ok":
        pytest.fail(f"the quick organism's build {status} (see {root / 'build.log'})")
    return root / "cache" / "organisms"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Every test session builds into its own cache, so CI starts cold and tests share builds.
    DOUBLEBIND_TEST_CACHE names a cache to keep between sessions (for quick local reruns)."""
    keep = os.environ.get("DOUBLEBIND_TEST_CACHE")
    if keep and XDIST_WORKER:  # workers never build into one cache side by side
        keep = os.path.join(keep, XDIST_WORKER)
    path = keep if keep else tmp_path_factory.mktemp("cache")
    old = os.environ.get("DOUBLEBIND_CACHE")
    os.environ["DOUBLEBIND_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DOUBLEBIND_CACHE", None)
    else:
        os.environ["DOUBLEBIND_CACHE"] = old


@pytest.fixture(scope="session")
def quick_organism(tmp_path_factory, _cache_dir):
    """The quick preset, built once per session: (folder, card)."""
    from doublebind.organisms.build import build_organism, organism_hash

    cfg = config.load(preset="quick")
    shared = os.environ.get(QUICK_DIR_ENV)
    if shared:  # copy the shared build into this worker's cache; build_organism then finds it
        entry = organism_hash(cfg)
        mine = Path(_cache_dir) / "organisms" / entry
        if not mine.exists():
            shutil.copytree(_wait_for_shared_quick(Path(shared)) / entry, mine)
    out = tmp_path_factory.mktemp("quick") / "organism"
    card = build_organism(cfg, out, show_progress=False)
    return out, card


# A config small enough to build in seconds; it does not verify.
# An organism built in a few seconds, for tests of the build itself (caching, verification,
# cards); it fails verification. Batch 8: a batch-32 step is most of such a build's time.
TINY = [
    "base_training.steps=40", "teacher_training.steps=40", "trusted_training.steps=10",
    "base_training.batch=8", "teacher_training.batch=8", "trusted_training.batch=8",
    "eval.n_prompts=30", "eval.n_samples=20",
]


def tiny_recipe(defaults: dict, **over):
    """A small recipe for tests: `defaults` per test file, `over` per test. Sections are
    merged one level deep, so e.g. `prompts={"contexts": {...}}` replaces the context mix."""
    import copy

    base = {"kind": "recipe", "name": "t", "seed": 0, "sampling": {"soft_labels": "full"},
            "objective": {"kind": "sft"}, "eval": {"n_prompts": 20, "n_samples": 0}, **copy.deepcopy(defaults)}
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return config.build(config.RecipeConfig, base)


# `run_cli` runs the command line in this process; "subprocess" runs every call as
# `python -m doublebind …` in a fresh interpreter instead (the entry point itself; the tests
# that stop or kill a command always start their own process).
CLI_MODE_ENV = "DOUBLEBIND_TEST_CLI"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(*args: str, env_cache=None) -> subprocess.CompletedProcess:
    """Run `doublebind *args`; the exit status, stdout and stderr as a CompletedProcess.

    In this process by default: a fresh interpreter pays 3-4 s of imports (torch,
    transformers) before the command starts, and the suite runs dozens of commands. What a
    command could leave behind is put back afterwards: the environment, `sys.argv` (the
    report prints its command from it) and torch's thread count; malloc's raised thresholds
    (`doublebind.heap`) cannot be put back and stay, changing no number. Warnings go to the
    command's stderr under Python's default filters, as they would in its own process, not
    to pytest's warning record."""
    if os.environ.get(CLI_MODE_ENV) == "subprocess":
        env = dict(os.environ)
        if env_cache:
            env["DOUBLEBIND_CACHE"] = str(env_cache)
        return subprocess.run([sys.executable, "-m", "doublebind", *args], capture_output=True, text=True, env=env)
    import contextlib
    import io

    import torch

    from doublebind.cli import main

    env, argv, threads = dict(os.environ), sys.argv, torch.get_num_threads()
    if env_cache:
        os.environ["DOUBLEBIND_CACHE"] = str(env_cache)
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["doublebind", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()  # a fresh interpreter's filters (and no "already shown" memory)
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _show_warning
            main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["doublebind", *args], code, out.getvalue(), err.getvalue())
