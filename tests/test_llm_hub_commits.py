"""Hub models are pinned by commit: an organism's hash covers the commit a load of each hub
model reads now, so a model that moved on in the hub (or in the local cache) is another
organism, not the cached one, and every load of a build reads that commit
(`llm.organism.hub_commit`). No network here: a Hugging Face cache laid out by hand, read
with HF_HUB_OFFLINE=1 in a fresh interpreter (huggingface_hub reads both settings when it
is imported)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import yaml

from doublebind import config
from doublebind.llm.organism import hub_commit, resolve_model

from .test_llm_organism import organism_yaml

REPO = "doublebind-test/tiny-llama"
SHA1, SHA2 = "1" * 40, "2" * 40

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from doublebind import config
    from doublebind.llm import organism as o

    cfg = config.load(Path(sys.argv[1]))
    ref = Path(sys.argv[2])
    out = {"commits": o.hub_commits(cfg), "hash": o.organism_hash(cfg)}
    card = o.build_hf_organism(cfg, None, show_progress=False)
    out["card_revisions"] = {r: m["revision"] for r, m in card["models"].items()}
    ref.write_text(sys.argv[3])  # the hub moved on: main is another commit
    o.hub_commit.cache_clear()
    out["moved_commits"], out["moved_hash"] = o.hub_commits(cfg), o.organism_hash(cfg)
    pinned = config.load(Path(sys.argv[4]))
    out["pinned_commits"] = o.hub_commits(pinned)
    print(json.dumps(out))
""")


def _hub_cache(root, tiny):
    """A hub cache holding REPO at two commits (the same files), main at SHA1."""
    repo = root / f"models--{REPO.replace('/', '--')}"
    for sha in (SHA1, SHA2):
        shutil.copytree(tiny, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA1)
    return repo / "refs" / "main"


def test_a_hub_model_is_hashed_and_loaded_by_its_commit(tmp_path):
    cfg = config.load(organism_yaml(tmp_path))
    tiny = resolve_model(cfg.base, cfg)  # the tiny model's folder, built in the test cache
    ref = _hub_cache(tmp_path / "hub", tiny)
    hub = {"teacher": {"model": REPO, "system_prompt": "You love owls."}, "base": {"model": REPO},
           "trusted": {"model": "tiny:llama"}}
    path = organism_yaml(tmp_path, **hub)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()),
                                      "base": {"model": REPO, "revision": SHA1}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(ref), SHA2, str(pinned)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["commits"] == {"teacher.model": SHA1, "base.model": SHA1}  # tiny: models have none
    assert out["card_revisions"] == {"teacher": SHA1, "base": SHA1, "trusted": None}
    assert out["moved_commits"] == {"teacher.model": SHA2, "base.model": SHA2}
    assert out["moved_hash"] != out["hash"]
    # a revision written as a commit is the commit, wherever main points
    assert out["pinned_commits"] == {"teacher.model": SHA2, "base.model": SHA1}


def test_what_a_commit_resolves_to(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    hub_commit.cache_clear()
    try:
        assert hub_commit(REPO, SHA1) == SHA1  # a full commit is itself, cached or not
        assert hub_commit(REPO, None) is None  # not in the cache, and offline
        refs = tmp_path / f"models--{REPO.replace('/', '--')}" / "refs"
        refs.mkdir(parents=True)
        (refs / "main").write_text(SHA2 + "\n")
        (refs / "v1").write_text("not a commit")
        assert hub_commit(REPO, None) is None  # once per process: the answer is kept
        hub_commit.cache_clear()
        assert hub_commit(REPO, None) == SHA2
        assert hub_commit(REPO, "main") == SHA2
        assert hub_commit(REPO, "v1") is None
        assert hub_commit(REPO, "abc123") is None  # a short hash is not a commit
    finally:
        hub_commit.cache_clear()
