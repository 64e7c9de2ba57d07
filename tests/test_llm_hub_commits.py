"""Hub models are pinned by commit: an organism's hash covers the commit a load of each hub
model reads now, so a model that moved on in the hub (or in the local cache) is another
organism, not the cached one, and every load of a build reads that commit
(`llm.organism.hub_commit`), even after the branch has moved to a commit that cannot load.
No network here: a Hugging Face cache laid out by hand, read with HF_HUB_OFFLINE=1 in a
fresh interpreter (the environment a load reads)."""

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
ADAPTER = "doublebind-test/tiny-lora"
SHA1, SHA2 = "1" * 40, "2" * 40

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from doublebind import config
    from doublebind.llm import organism as o

    cfg = config.load(Path(sys.argv[1]))
    refs = [Path(p) for p in sys.argv[2].split(",")]
    out = {"commits": o.hub_commits(cfg), "hash": o.organism_hash(cfg)}
    card = o.build_hf_organism(cfg, Path(sys.argv[3]), show_progress=False)
    out["card_revisions"] = {r: [m["revision"], m.get("adapter_revision")] for r, m in card["models"].items()}
    for ref in refs:  # the hub moved on: main is another commit, whose snapshot cannot load
        ref.write_text(sys.argv[4])
    o.hub_commit.cache_clear()
    # the built organism still loads what it was built from: every load reads its card's commits
    domain = o.HFDomain(Path(sys.argv[3]), card)
    for role in ("teacher", "base"):
        domain.load_model(role)
    out["vllm"] = o.vllm_engine_args(card["models"]["teacher"])
    out["moved_commits"], out["moved_hash"] = o.hub_commits(cfg), o.organism_hash(cfg)
    pinned = config.load(Path(sys.argv[5]))
    out["pinned_commits"] = o.hub_commits(pinned)
    print(json.dumps(out))
""")


def _hub_repo(root, repo, files):
    """`repo` in a hub cache at two commits: SHA1 holding `files` (a folder), main at SHA1, and
    SHA2 holding only a README (a load of it fails). Returns main's ref file."""
    folder = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files, folder / "snapshots" / SHA1)
    (folder / "snapshots" / SHA2).mkdir(parents=True)
    (folder / "snapshots" / SHA2 / "README.md").write_text("moved on")
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SHA1)
    return folder / "refs" / "main"


def _adapter(tiny, folder):
    """A LoRA adapter on the tiny model, saved as PEFT saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(folder))
    return folder


def test_a_hub_model_is_hashed_and_loaded_by_its_commit(tmp_path):
    cfg = config.load(organism_yaml(tmp_path))
    tiny = resolve_model(cfg.base, cfg)  # the tiny model's folder, built in the test cache
    hub = tmp_path / "hub"
    refs = [_hub_repo(hub, REPO, tiny), _hub_repo(hub, ADAPTER, _adapter(tiny, tmp_path / "adapter"))]
    roles = {"teacher": {"model": REPO, "adapter": ADAPTER, "system_prompt": "You love owls."},
             "base": {"model": REPO}, "trusted": {"model": "tiny:llama"}}
    path = organism_yaml(tmp_path, **roles)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()),
                                      "base": {"model": REPO, "revision": SHA1}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(path), ",".join(map(str, refs)), str(tmp_path / "org"),
                        SHA2, str(pinned)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["commits"] == {"teacher.model": SHA1, "teacher.adapter": SHA1, "base.model": SHA1}  # tiny: none
    assert out["card_revisions"] == {"teacher": [SHA1, SHA1], "base": [SHA1, None], "trusted": [None, None]}
    snapshot = hub / f"models--{ADAPTER.replace('/', '--')}" / "snapshots" / SHA1
    assert out["vllm"] == {"model_path": REPO, "revision": SHA1, "tokenizer_revision": SHA1,
                           "lora_paths": {"teacher": str(snapshot)}}
    assert out["moved_commits"] == {"teacher.model": SHA2, "teacher.adapter": SHA2, "base.model": SHA2}
    assert out["moved_hash"] != out["hash"]
    # a revision written as a commit is the commit, wherever main points
    assert out["pinned_commits"] == {"teacher.model": SHA2, "teacher.adapter": SHA2, "base.model": SHA1}


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
