import os
import subprocess
import sys

import pytest

from doublebind import config
from doublebind.organisms.models import quiet_transformers

quiet_transformers()


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Every test session builds into its own cache, so CI starts cold and tests share builds.
    DOUBLEBIND_TEST_CACHE names a cache to keep between sessions (for quick local reruns)."""
    keep = os.environ.get("DOUBLEBIND_TEST_CACHE")
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
    from doublebind.organisms.build import build_organism

    out = tmp_path_factory.mktemp("quick") / "organism"
    card = build_organism(config.load(preset="quick"), out, show_progress=False)
    return out, card


# A config small enough to build in seconds; it does not verify.
TINY = [
    "base_training.steps=40", "teacher_training.steps=40", "trusted_training.steps=10",
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


def run_cli(*args: str, env_cache=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_cache:
        env["DOUBLEBIND_CACHE"] = str(env_cache)
    return subprocess.run([sys.executable, "-m", "doublebind", *args], capture_output=True, text=True, env=env)
