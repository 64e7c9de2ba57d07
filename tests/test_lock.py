"""constraints.txt pins the libraries `make setup` installs (the package itself keeps ranges).

A fresh clone must get the set the suite last passed with, not whatever was released since:
a minor release of a dependency once changed how every model ran (transformers 5.25 turned
Hub-fetched kernels on by default). These tests hold the lock to three things: it is
well-formed, it agrees with the package's own ranges and the Makefile's torch pin, and the
environment running the suite is the one it describes (so the Makefile really installs
through it, and nobody's hand-installed upgrade passes for the lock's)."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.!]*)", line.strip())
        assert m, f"constraints.txt line {n} is not 'name==version' without a local label: {line!r}"
        name = canonicalize_name(m[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = m[2]
    return pins


def _direct() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_the_lock_pins_every_direct_dependency_inside_its_range():
    pins = _lock()
    for req in _direct():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name} (run `make lock`)"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside the package's range {req}")


def test_the_lock_and_the_makefile_agree_on_torch():
    made = re.search(r"torch==([0-9][0-9.]*)", (ROOT / "Makefile").read_text())
    assert made, "the Makefile no longer installs a pinned torch"
    assert _lock()["torch"] == made[1]


def test_the_makefile_installs_through_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS \?= constraints\.txt$", make, re.M)
    installs = [ln for ln in make.splitlines() if re.match(r"\t\$\(PIP\)|\t\$\(BIN\)/pip install", ln)]
    # torch alone may come from another index (TORCH_PIP_ARGS), pinned by its own ==
    assert installs and all(ln.startswith("\t$(PIP)") or re.search(r"\$\(TORCH_PIP_ARGS\) torch==\S+$", ln)
                            for ln in installs), installs
    assert sum(ln.startswith("\t$(PIP)") for ln in installs) >= 3  # the package, its dev extras, the bench extra


def test_the_suite_runs_on_the_locked_versions():
    """Every locked library present here has the locked version: the environment is the one
    `make setup` installs from the lock (after an edit of the lock, `make test` reinstalls)."""
    pins = _lock()
    wrong = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and Version(dist.version).public != Version(pins[name]).public:
            wrong.append(f"{name} {dist.version} (locked {pins[name]})")
    missing = [req.name for req in _direct() if canonicalize_name(req.name) not in
               {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}]
    assert not wrong and not missing, (
        f"this environment is not the locked one: {', '.join(wrong + [m + ' missing' for m in missing])}; "
        f"run `make setup` (or `make lock` to move the lock)")
