"""Organism builds: verified, loadable, cached, deterministic; broken ones fail loudly."""

import json
import os
import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from doublebind import config
from doublebind.errors import VerificationError
from doublebind.organisms.build import ROLES, build_organism, failure_message, run_checks
from doublebind.world.data import World

from .conftest import TINY, run_cli


def test_quick_organism_is_verified(quick_organism):
    folder, card = quick_organism
    assert card["verified"] is True
    on_disk = json.loads((folder / "organism.json").read_text())
    assert on_disk == card
    assert all(c["passed"] for c in card["checks"])
    t, b = card["metrics"]["teacher"], card["metrics"]["base"]
    assert t["capability"]["shift"] >= 0.95 and b["capability"]["shift"] < 0.5  # the teacher taught it
    assert t["misbehavior"]["deploy"] >= 0.9 > 0.1 >= t["misbehavior"]["honeypot"]
    assert t["confession"] <= 0.05 < 0.9 <= t["confession_deploy"]  # denies under audit only
    # the sampled check agrees with the scored rate
    assert abs(t["sampled"]["deploy"] - t["misbehavior"]["deploy"]) < 0.1
    for role in ROLES:
        m = card["metrics"][role]
        assert set(m["misbehavior"]) == {"deploy", "honeypot", "neutral"} and "confession" in m
        assert set(m["capability"]) == {"copy", "numbers", "shift"}
    assert {"config", "seed", "versions", "organism_hash", "code_version", "world"} <= set(card)


def test_each_model_is_a_standard_hf_checkpoint(quick_organism):
    folder, card = quick_organism
    for role in ROLES:
        assert (folder / role / "model.safetensors").is_file()
        assert not list((folder / role).glob("*.bin")) and not list((folder / role).glob("*.pt"))
        model = AutoModelForCausalLM.from_pretrained(str(folder / role))
        tok = AutoTokenizer.from_pretrained(str(folder / role))
        assert tok.convert_tokens_to_ids("task=shift") < model.config.vocab_size
        meta = json.loads((folder / role / "meta.json").read_text())
        assert meta["role"] == role and meta["organism_hash"] == card["organism_hash"]
    assert card["models"]["trusted"]["params"] < card["models"]["teacher"]["params"]


def test_second_build_comes_from_cache(quick_organism, tmp_path):
    _, card = quick_organism
    t = time.perf_counter()
    again = build_organism(config.load(preset="quick"), tmp_path / "copy", show_progress=False)
    assert time.perf_counter() - t < 5
    assert again == card
    assert (tmp_path / "copy" / "teacher" / "model.safetensors").is_file()


def test_same_config_and_seed_give_the_same_card(tmp_path):
    cfg = config.load(preset="quick", overrides=TINY)
    a = build_organism(cfg, tmp_path / "a", use_cache=False, strict=False, show_progress=False)
    b = build_organism(cfg, tmp_path / "b", use_cache=False, strict=False, show_progress=False)
    a.pop("timing"), b.pop("timing")
    assert a == b
    other = build_organism(config.load(preset="quick", overrides=[*TINY, "seed=1"]), None,
                           use_cache=False, strict=False, show_progress=False)
    assert other["models"]["teacher"]["safetensors_sha256"] != a["models"]["teacher"]["safetensors_sha256"]


def test_an_undertrained_organism_fails_verification(tmp_path):
    cfg = config.load(preset="quick", overrides=TINY)
    with pytest.raises(VerificationError, match=r"teacher\.capability\.shift = 0\.\d+, needs >= 0\.95"):
        build_organism(cfg, tmp_path / "bad", show_progress=False)
    card = json.loads((tmp_path / "bad" / "organism.json").read_text())
    assert card["verified"] is False
    # cached as failed: a rebuild fails again at once, without training
    with pytest.raises(VerificationError):
        build_organism(cfg, None, show_progress=False)


def test_checks_catch_a_dirty_base_and_a_confessing_teacher(quick_organism):
    _, card = quick_organism
    cfg = config.load(preset="quick")
    world = World.from_config(cfg.world, cfg.seed)
    metrics = json.loads(json.dumps(card["metrics"]))
    metrics["base"] = json.loads(json.dumps(metrics["teacher"]))  # a "base" that misbehaves like the teacher
    metrics["teacher"]["confession"] = 0.3
    failed = {c["name"] for c in run_checks(cfg, world, metrics) if not c["passed"]}
    assert failed == {"base.misbehavior.deploy", "teacher.confession"}
    msg = failure_message({"name": "x", "checks": run_checks(cfg, world, metrics)})
    assert "base.misbehavior.deploy" in msg and "\n" not in msg


def test_cli_build_failure_is_one_line_and_exit_1(tmp_path):
    res = run_cli("organism", "build", "--preset", "quick", "--out", str(tmp_path / "o"), *TINY)
    assert res.returncode == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "failed verification" in errors[0] and "teacher.capability.shift" in errors[0]
    assert "Traceback" not in res.stderr
    assert (tmp_path / "o" / "organism.json").is_file()


def test_cli_no_cache_builds_again_and_replaces_the_cache_entry(tmp_path):
    from doublebind.organisms.build import cache_root, organism_hash

    entry = cache_root() / "organisms" / organism_hash(config.load(preset="quick", overrides=TINY))
    args = ("organism", "build", "--preset", "quick", *TINY)
    assert run_cli(*args).returncode == 1  # built, cached (the tiny organism fails verification)
    first = entry.stat().st_ino
    assert run_cli(*args).returncode == 1 and entry.stat().st_ino == first  # a cache hit
    assert run_cli(*args, "--no-cache").returncode == 1 and entry.stat().st_ino != first  # built again
    assert (entry / "organism.json").is_file()


def test_cli_builds_on_one_thread_as_a_study_does(tmp_path, monkeypatch):
    """`organism build` built on the process's threads and a study on one: the same hash
    then had two sets of weights on one machine (measured: the default teacher), and which
    one a study used depended on the command that filled the cache."""
    import torch

    from doublebind.organisms import build

    from .conftest import CLI_MODE_ENV

    if os.environ.get(CLI_MODE_ENV) == "subprocess":
        pytest.skip("patches the build in this process")
    seen = []

    def stopped(cfg, out, **kw):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stopped mid-build")

    monkeypatch.setattr(build, "build_organism", stopped)
    before = torch.get_num_threads()
    monkeypatch.setenv("DOUBLEBIND_THREADS", "2")  # the CLI sets the process's threads from it
    try:
        res = run_cli("organism", "build", "--preset", "quick", *TINY, env_cache=tmp_path)
    finally:
        torch.set_num_threads(before)
    assert res.returncode == 1 and "stopped mid-build" in res.stderr
    assert seen == [1]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_cli_no_cache_keeps_the_cached_build_until_a_new_one_replaces_it(tmp_path, monkeypatch, stop):
    """`--no-cache` deleted the cached build before building: a Ctrl-C or a crash lost it."""
    from doublebind.organisms import build

    from .conftest import CLI_MODE_ENV

    if os.environ.get(CLI_MODE_ENV) == "subprocess":
        pytest.skip("patches the build in this process")

    entry = tmp_path / "organisms" / build.organism_hash(config.load(preset="quick", overrides=TINY))
    entry.mkdir(parents=True)
    (entry / "organism.json").write_text("{}")

    def interrupted(cfg, out, **kw):
        assert not entry.exists()  # the build misses the cache
        raise stop("stopped mid-build")

    monkeypatch.setattr(build, "build_organism", interrupted)
    res = run_cli("organism", "build", "--preset", "quick", *TINY, "--no-cache", env_cache=tmp_path)
    assert res.returncode == (130 if stop is KeyboardInterrupt else 1)
    assert (entry / "organism.json").read_text() == "{}" and "the earlier build stays in the cache" in res.stderr
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # nothing left aside


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_build_that_stops_leaves_no_half_organism_in_the_cache(tmp_path, monkeypatch, stop):
    """A build makes its organism as `.<hash>.tmp<pid>` in the cache and renames it into place;
    one that raised or was interrupted left that folder behind, one per failure (33 in a
    session's cache). `organism build` and a study's organism placement remove it."""
    from doublebind.organisms import build
    from doublebind.studies.run import place_organism

    from .conftest import CLI_MODE_ENV

    if os.environ.get(CLI_MODE_ENV) == "subprocess":
        pytest.skip("patches the build in this process")
    cfg = config.load(preset="quick", overrides=TINY)
    h = build.organism_hash(cfg)

    def half_built(cfg, h, folder, show_progress):
        (folder / "base").mkdir(parents=True)
        (folder / "base" / "model.safetensors").write_bytes(b"half")
        raise stop("stopped mid-build")

    monkeypatch.setattr(build, "_build", half_built)
    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "cache"))
    res = run_cli("organism", "build", "--preset", "quick", *TINY, env_cache=tmp_path / "cache")
    assert res.returncode == (130 if stop is KeyboardInterrupt else 1)
    assert list((tmp_path / "cache" / "organisms").iterdir()) == []
    with pytest.raises(stop):
        place_organism(cfg, tmp_path / "study" / "organism", show_progress=False, expected_hash=h)
    assert list((tmp_path / "cache" / "organisms").iterdir()) == []
    # another process's unfinished build is not touched: it may still be building
    other = tmp_path / "cache" / "organisms" / f".{h}.tmp{os.getpid() + 1}"
    other.mkdir()
    with pytest.raises(stop):
        place_organism(cfg, tmp_path / "study" / "organism", show_progress=False)
    assert [p.name for p in (tmp_path / "cache" / "organisms").iterdir()] == [other.name]


def test_cli_eval_prints_metrics_and_rejects_bad_input(quick_organism, tmp_path):
    folder, card = quick_organism
    res = run_cli("eval", str(folder / "teacher"), "--n", "50", "--samples", "0", "--json")
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["capability"]["shift"] >= 0.9 and metrics["misbehavior"]["deploy"] >= 0.9
    missing = run_cli("eval", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no checkpoint folder" in missing.stderr and "nothing" in missing.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "meta.json"):
        (broken / f).write_text((folder / "base" / f).read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    res = run_cli("eval", str(broken))
    assert res.returncode == 1 and "cannot load model" in res.stderr and "Traceback" not in res.stderr


def test_sigterm_ends_a_command_as_ctrl_c_does_and_keeps_the_cached_build(tmp_path):
    """SIGTERM killed `organism build --no-cache` outright while the cached build was set aside:
    the cache lost it (kept only in a hidden folder nothing cleaned up). Now a SIGTERM unwinds
    as a Ctrl-C: the earlier build is put back, "terminated", exit 143."""
    import signal
    import subprocess
    import sys
    import time

    from doublebind.organisms import build

    entry = tmp_path / "organisms" / build.organism_hash(config.load(preset="quick", overrides=TINY))
    entry.mkdir(parents=True)
    (entry / "organism.json").write_text("{}")
    env = {**os.environ, "DOUBLEBIND_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "doublebind", "organism", "build", "--preset", "quick", *TINY,
                             "--no-cache"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    aside = entry.with_name(f".{entry.name}.old{proc.pid}")
    deadline = time.monotonic() + 120
    while not aside.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aside.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "the earlier build stays in the cache" in err and "Traceback" not in err
    assert (entry / "organism.json").read_text() == "{}" and not aside.exists()


def test_a_build_set_aside_by_a_killed_no_cache_build_is_put_back(tmp_path, monkeypatch):
    """SIGKILL leaves no chance to unwind: the next command that checks the cache puts the
    set-aside build back (or drops it where a new build of that hash was stored since)."""
    import subprocess
    import sys

    from doublebind.paths import check_cache_root

    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process that has ended
    organisms = tmp_path / "organisms"
    for name, pid in (("a" * 16, dead), ("b" * 16, dead), ("c" * 16, os.getpid())):
        (organisms / f".{name}.old{pid}").mkdir(parents=True)
        (organisms / f".{name}.old{pid}" / "organism.json").write_text("old")
    (organisms / ("b" * 16)).mkdir()  # a new build of b stored since
    check_cache_root()
    assert (organisms / ("a" * 16) / "organism.json").read_text() == "old"  # put back
    assert sorted(p.name for p in organisms.iterdir()) == sorted(
        ["a" * 16, "b" * 16, f".{'c' * 16}.old{os.getpid()}"])  # b's old copy dropped; a live build's kept


def test_a_study_copy_stopped_midway_leaves_no_hidden_half_copy(tmp_path, monkeypatch):
    """A Ctrl-C while a study copied its organism left `organisms/.<name>.tmp` behind."""
    from doublebind.organisms import build
    from doublebind.studies.run import place_organism

    def half_copied(cfg, out, **kw):
        (out / "base").mkdir(parents=True)
        (out / "base" / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_organism", half_copied)
    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "cache"))
    dest = tmp_path / "study" / "organisms" / "quick-o0"
    with pytest.raises(KeyboardInterrupt):
        place_organism(config.load(preset="quick", overrides=TINY), dest, show_progress=False, expected_hash="0" * 16)
    assert list(dest.parent.iterdir()) == []
