"""Caches verify what they hand out: a truncated or same-size scrambled file in a cached
organism or a teacher-output entry is caught before use, by name, then rebuilt, recomputed
or refused."""

import copy
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from doublebind import config, integrity
from doublebind import teacher as teacher_mod
from doublebind.integrity import STAMPS, CorruptCacheError, file_sha256, verify_file
from doublebind.organisms import build as build_mod
from doublebind.organisms.build import build_organism, cache_root
from doublebind.organisms.domain import open_domain

from .conftest import TINY, run_cli, tiny_recipe


def scramble(path):
    """Flip 64 bytes in the middle of the file's data; the size stays the same. In a
    safetensors file the header is left whole, so the file still loads, with other weights."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little") if path.suffix == ".safetensors" else 0
    mid = start + (len(data) - start) // 2
    for i in range(mid, min(mid + 64, len(data))):
        data[i] = data[i] ^ 0x01 if path.suffix == ".safetensors" else (ord("x") if data[i] != ord("x") else ord("y"))
    path.write_bytes(bytes(data))
    assert len(data) == path.stat().st_size


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


# ---- stamps ----------------------------------------------------------------------------

def _weights(path, n):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(n)}, str(path))
    return path


def test_a_stamp_spares_rehashing_but_any_rewrite_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "RACY_NS", 0)
    f = _weights(tmp_path / "model.safetensors", 1 << 14)
    sha = file_sha256(f)
    time.sleep(0.05)  # past the filesystem's timestamp tick
    verify_file(f, sha, "model 'x'")
    stamp = json.loads((tmp_path / STAMPS).read_text())["model.safetensors"]
    assert stamp["sha256"] == sha and stamp["size"] == f.stat().st_size
    hashed = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(p) or real(p))
    verify_file(f, sha, "model 'x'")
    assert hashed == []  # the stamp was trusted
    time.sleep(0.05)
    scramble(f)
    assert file_sha256(f) != sha
    with pytest.raises(CorruptCacheError, match=r"model 'x': .*model.safetensors is corrupt"):
        verify_file(f, sha, "model 'x'")
    assert hashed == [f]


def test_a_file_changed_just_now_is_never_stamped(tmp_path):
    f = _weights(tmp_path / "model.safetensors", 1 << 10)
    sha = file_sha256(f)
    verify_file(f, sha, "model 'x'")
    assert not (tmp_path / STAMPS).exists()
    scramble(f)  # possibly within the same timestamp tick as the write above
    with pytest.raises(CorruptCacheError):
        verify_file(f, sha, "model 'x'")


def test_an_old_mtime_does_not_make_a_fresh_file_settled(tmp_path):
    """A file copied with its times kept (mtime set back, ctime now) was still written just
    now: its ctime, not its mtime, says so, and it is not stamped."""
    import os

    f = _weights(tmp_path / "model.safetensors", 1 << 10)
    old = time.time_ns() - 3600 * 10**9
    os.utime(f, ns=(old, old))
    verify_file(f, file_sha256(f), "model 'x'")
    assert not (tmp_path / STAMPS).exists()


def test_a_file_written_while_it_is_hashed_is_not_stamped(tmp_path, monkeypatch):
    """The hash read from a file that changed under the reader belongs to neither version:
    it is returned for this check but never stamped."""
    monkeypatch.setattr(integrity, "RACY_NS", 0)
    f = _weights(tmp_path / "model.safetensors", 1 << 12)
    time.sleep(0.05)
    real = integrity.file_sha256

    def hash_then_append(p):
        sha = real(p)
        time.sleep(0.02)  # past the timestamp tick
        with open(p, "ab") as fh:
            fh.write(b"x")
        return sha

    monkeypatch.setattr(integrity, "file_sha256", hash_then_append)
    integrity.current_sha256(f)
    assert "model.safetensors" not in integrity._read_stamps(tmp_path / STAMPS)


def test_organism_models_are_checked_where_the_card_puts_them(tmp_path):
    """A model's folder is the card's `path`, which need not be its role's name."""
    from doublebind.integrity import verify_organism_models

    (tmp_path / "models" / "teacher-final").mkdir(parents=True)
    (tmp_path / "models" / "teacher-final" / "config.json").write_text("{}")
    f = _weights(tmp_path / "models" / "teacher-final" / "model.safetensors", 1 << 10)
    card = {"name": "o", "config": {"kind": "organism"},
            "models": {"teacher": {"path": "models/teacher-final", "safetensors_sha256": file_sha256(f)}}}
    verify_organism_models(tmp_path, card)
    card["models"]["teacher"]["safetensors_sha256"] = "0" * 64
    with pytest.raises(CorruptCacheError, match=r"model 'teacher': .*teacher-final/model.safetensors is corrupt"):
        verify_organism_models(tmp_path, card)


def test_a_world_card_must_hash_every_model_and_every_card_needs_its_config(tmp_path):
    """A world card whose teacher had lost its hash passed `show` and `validate` with the
    teacher truncated (a model without a hash was taken for a Hugging Face one); a card with
    no config was an internal error (KeyError) once a run opened it."""
    from doublebind.integrity import verify_organism_models

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    f = _weights(tmp_path / "teacher" / "model.safetensors", 1 << 10)
    card = {"name": "o", "config": {"kind": "organism"}, "models": {"teacher": {"path": "teacher"}}}
    with pytest.raises(CorruptCacheError, match=r"model 'teacher': the card holds no hash of its weights"):
        verify_organism_models(tmp_path, card)
    card["models"]["teacher"]["safetensors_sha256"] = file_sha256(f)
    verify_organism_models(tmp_path, card)
    for kind in ("denier", "recued"):  # post-trained world organisms: their models are in the folder too
        with pytest.raises(CorruptCacheError, match="the card holds no hash of its weights"):
            verify_organism_models(tmp_path, {**card, "kind": kind, "models": {"teacher": {"path": "teacher"}}})
    with pytest.raises(CorruptCacheError, match="organism 'o': its card has no config"):
        verify_organism_models(tmp_path, {k: v for k, v in card.items() if k != "config"})
    # a Hugging Face organism's models live outside its folder: no hash is expected of them
    verify_organism_models(tmp_path, {"name": "h", "kind": "hf", "config": {"kind": "hf_organism"},
                                      "models": {"teacher": {"id": "org/model"}}})


def test_show_and_validate_refuse_a_world_card_without_a_model_hash(tiny_cache, tmp_path):
    (src,) = (tiny_cache / "organisms").iterdir()
    folder = tmp_path / "o"
    shutil.copytree(src, folder)
    card = json.loads((folder / "organism.json").read_text())
    del card["models"]["teacher"]["safetensors_sha256"]
    (folder / "organism.json").write_text(json.dumps(card))
    with open(folder / "teacher" / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    res = run_cli("organism", "show", str(folder))
    assert res.returncode == 1 and "model 'teacher': the card holds no hash of its weights" in res.stderr
    study = tmp_path / "study.yaml"  # a study over the built organism: validate checks it as study run does
    study.write_text(f"kind: study\nname: s\norganism: {{path: {folder}}}\nrecipe: "
                     f"{Path(__file__).resolve().parent.parent / 'configs' / 'recipes' / 'study.yaml'}\n"
                     f"techniques: [baseline]\nseeds: [0]\n")
    res = run_cli("validate", str(study))
    assert res.returncode == 1 and "model 'teacher': the card holds no hash of its weights" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ---- organisms -------------------------------------------------------------------------

def _corrupt_card(path):
    path.write_text('{"name": "quick", "organism_hash": ')


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A cache holding one tiny organism, built once for the module; tests damage copies."""
    root = tmp_path_factory.mktemp("tiny-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOUBLEBIND_CACHE", str(root))
        build_organism(config.load(preset="quick", overrides=TINY), None, strict=False, show_progress=False)
    return root


@pytest.mark.parametrize("role, damage", [("teacher", scramble), ("base", truncate), (None, _corrupt_card)])
def test_a_corrupt_cached_organism_is_rebuilt_not_used(tmp_path, monkeypatch, capsys, role, damage, tiny_cache):
    shutil.copytree(tiny_cache, tmp_path / "cache")
    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "RACY_NS", 0)  # stamp at once, as an entry used long ago would be
    cfg = config.load(preset="quick", overrides=TINY)
    builds = []
    real = build_mod._build
    monkeypatch.setattr(build_mod, "_build", lambda *a, **k: builds.append(1) or real(*a, **k))
    card = build_organism(cfg, None, strict=False, show_progress=False)
    assert builds == []  # the copied entry is a hit
    cached = cache_root() / "organisms" / card["organism_hash"]
    time.sleep(0.05)
    assert build_organism(cfg, None, strict=False, show_progress=False) == card  # a verified hit, stamped
    assert (cached / "teacher" / STAMPS).is_file()
    target = cached / role / "model.safetensors" if role else cached / "organism.json"
    time.sleep(0.05)
    damage(target)

    capsys.readouterr()
    again = build_organism(cfg, tmp_path / "copy", strict=False, show_progress=False)
    err = capsys.readouterr().err
    assert builds == [1]  # detected, rebuilt
    assert "corrupt cache entry" in err and "rebuilding" in err
    if role:
        assert f"model '{role}'" in err and f"{role}/model.safetensors" in err
    else:
        assert "organism.json" in err
    for r, m in card["models"].items():
        assert file_sha256(cached / r / "model.safetensors") == m["safetensors_sha256"]
        assert file_sha256(tmp_path / "copy" / r / "model.safetensors") == m["safetensors_sha256"]
    assert {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in card.items() if k != "timing"}
    builds.clear()
    build_organism(cfg, None, strict=False, show_progress=False)
    assert builds == []  # sound again: a hit


def _recipe_file(tmp_path):
    recipe = {"kind": "recipe", "name": "tiny", "prompts": {"size": 32}, "sampling": {"soft_labels": "none"},
              "objective": {"kind": "sft"}, "training": {"steps": 2, "batch": 8, "checkpoint_every": 2},
              "eval": {"n_prompts": 10, "n_samples": 0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("role, damage", [("teacher", scramble), ("alt_base", truncate)])
def test_distillation_refuses_a_corrupt_organism_by_name(quick_organism, tmp_path, role, damage):
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    open_domain(org)  # sound
    damage(org / role / "model.safetensors")
    with pytest.raises(CorruptCacheError, match=rf"model '{role}': .*{role}/model.safetensors is "
                                                rf"(corrupt|missing).*rebuild the organism"):
        open_domain(org)
    res = run_cli("distill", "--organism", str(org), "--recipe", str(_recipe_file(tmp_path)),
                  "--out", str(tmp_path / "run"))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"model '{role}'" in errors[0] and "model.safetensors is corrupt" in errors[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_show_prints_the_card_and_names_a_damaged_model_file(quick_organism, tmp_path):
    """`organism show` read the card alone, and showed a truncated teacher as verified."""
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    res = run_cli("organism", "show", str(org))
    assert res.returncode == 0 and "hash" in res.stdout, res.stderr
    assert res.stdout.strip().endswith("model files: base, teacher, trusted, alt_base as the card hashed them")
    truncate(org / "teacher" / "model.safetensors")
    res = run_cli("organism", "show", str(org))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and "hash" in res.stdout and len(errors) == 1, res.stderr
    assert "model files:" not in res.stdout
    assert "model 'teacher'" in errors[0] and "describes the build, not this file" in errors[0]


@pytest.mark.parametrize("name", ["config.json", "meta.json", "tokenizer.json"])
def test_show_and_open_name_a_damaged_json_file_of_a_model(quick_organism, tmp_path, name):
    """`organism show` said verified for a truncated teacher config.json or meta.json (which
    distill refused), and everything took a truncated tokenizer.json (transformers' loader
    did not)."""
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    assert (org / "teacher" / name).is_file()
    truncate(org / "teacher" / name)
    res = run_cli("organism", "show", str(org))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr
    assert f"model 'teacher': {org / 'teacher' / name} is not valid JSON" in errors[0]
    with pytest.raises(CorruptCacheError, match=f"teacher/{name} is not valid JSON"):
        open_domain(org)


def test_eval_refuses_an_organism_model_its_card_did_not_hash(quick_organism, tmp_path, monkeypatch):
    """`eval org/teacher --organism org` scored a teacher whose weights had changed since the
    build (one byte of a weight: the file still loads), as if it were the card's teacher."""
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    weights = org / "teacher" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: still a valid file
    weights.write_bytes(bytes(data))
    res = run_cli("eval", str(org / "teacher"), "--organism", str(org), "--n", "5", "--samples", "0")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "model 'teacher'" in errors[0] and "is corrupt" in errors[0], errors
    assert "capability" not in res.stdout
    alone = run_cli("eval", str(org / "teacher"), "--n", "5", "--samples", "0")  # without --organism: the same check
    assert alone.returncode == 1 and "is corrupt" in alone.stderr and "capability" not in alone.stdout, alone.stderr
    with monkeypatch.context() as m:  # `eval .` from inside the model folder: its parent is resolved
        m.chdir(org / "teacher")
        here = run_cli("eval", ".", "--n", "5", "--samples", "0")
    assert here.returncode == 1 and "is corrupt" in here.stderr, here.stderr
    res = run_cli("eval", str(org / "base"), "--organism", str(org), "--n", "5", "--samples", "0", "--json")
    assert res.returncode == 0, res.stderr  # the other models still match their hashes
    scores = json.loads(res.stdout)
    assert set(scores["capability"]) == set(quick_organism[1]["metrics"]["base"]["capability"])


def test_a_card_that_is_not_a_card_is_one_line(tmp_path):
    for text in ("[1, 2, 3]", "{}"):
        (tmp_path / "organism.json").write_text(text)
        res = run_cli("organism", "show", str(tmp_path))
        assert res.returncode == 1 and "not an organism card" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_show_refuses_a_verified_field_that_is_not_true_or_false(quick_organism, tmp_path):
    """`organism show` printed `verified: yes` for a card whose field was the string "yes"."""
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    card = json.loads((org / "organism.json").read_text())
    (org / "organism.json").write_text(json.dumps({**card, "verified": "yes"}))
    res = run_cli("organism", "show", str(org))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and errors == [f"error: {org / 'organism.json'} is not a complete organism card "
                                              f"(verified: 'yes', expected true or false)"], res.stderr


# ---- teacher outputs -------------------------------------------------------------------

@pytest.fixture
def teacher_setup(quick_organism, monkeypatch):
    domain = open_domain(quick_organism[0])
    recipe = tiny_recipe({"prompts": {"size": 16}})
    prompts = domain.prompts(recipe.prompts, 0)
    calls = []
    real = teacher_mod.generate
    monkeypatch.setattr(teacher_mod, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    return domain, prompts, recipe.sampling, calls


def _scramble_text(path):
    scramble(path)


@pytest.mark.parametrize("name, damage", [("soft.safetensors", scramble), ("soft.safetensors", truncate),
                                          ("samples.jsonl", _scramble_text)])
def test_a_corrupt_teacher_output_entry_is_recomputed(teacher_setup, tmp_path, capsys, name, damage):
    domain, prompts, scfg, calls = teacher_setup
    assert scfg.soft_labels == "full"
    h = domain.card["organism_hash"]
    first = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    again = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    assert len(calls) == 1 and again.responses == first.responses  # a cache hit
    entry = tmp_path / "teacher" / first.key
    assert set(json.loads((entry / "meta.json").read_text())["files"]) == {"samples.jsonl", "soft.safetensors"}
    damage(entry / name)
    with pytest.raises(CorruptCacheError) as e:  # what a caller without the teacher gets: one line
        teacher_mod._load(entry, prompts, first.key)
    assert name in str(e.value) and str(entry) in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    third = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    err = capsys.readouterr().err
    assert len(calls) == 2  # recomputed, not used
    assert "corrupt cache entry" in err and name in err and "recomputing" in err
    assert third.responses == first.responses and torch.equal(third.soft["logprobs"], first.soft["logprobs"])
    teacher_mod._load(entry, prompts, first.key)  # the entry is sound again


def test_a_teacher_output_entry_that_is_a_file_is_replaced(teacher_setup, tmp_path, capsys):
    """An entry that is a file was reported as corrupt, recomputed, and then not written back
    ("Not a directory"), leaving a stray temporary folder in the cache."""
    domain, prompts, scfg, calls = teacher_setup
    h = domain.card["organism_hash"]
    first = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    entry = tmp_path / "teacher" / first.key
    shutil.rmtree(entry)
    entry.write_text("x")
    again = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    assert "not a folder; recomputing it" in capsys.readouterr().err and len(calls) == 2
    assert again.responses == first.responses and entry.is_dir()
    assert sorted(p.name for p in entry.parent.iterdir()) == [first.key]  # no temporary folder left
    teacher_mod._load(entry, prompts, first.key)


def test_teacher_outputs_are_keyed_by_the_teachers_weights(teacher_setup, tmp_path):
    domain, prompts, scfg, calls = teacher_setup
    h = domain.card["organism_hash"]
    sound = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    damaged = copy.deepcopy(domain.teacher)
    with torch.no_grad():
        next(damaged.parameters()).view(-1)[0] += 0.25
    assert teacher_mod.weights_sha256(damaged) != teacher_mod.weights_sha256(domain.teacher)
    other = teacher_mod.teacher_outputs(damaged, h, prompts, scfg, 0, tmp_path)
    assert other.key != sound.key and len(calls) == 2  # not served the sound teacher's outputs
    restored = teacher_mod.teacher_outputs(domain.teacher, h, prompts, scfg, 0, tmp_path)
    assert restored.key == sound.key and len(calls) == 2  # nor the damaged one's, once restored


def test_a_teacher_output_entry_that_disagrees_with_its_meta_is_refused(teacher_setup, tmp_path):
    """Hashes that match are not enough: a file the meta does not record, or more rows than
    prompts, is a corrupt entry too."""
    import hashlib

    domain, prompts, scfg, _ = teacher_setup
    first = teacher_mod.teacher_outputs(domain.teacher, domain.card["organism_hash"], prompts, scfg, 0, tmp_path)
    entry = tmp_path / "teacher" / first.key
    meta_path = entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    # soft labels on disk that meta.json does not record
    meta_path.write_text(json.dumps({**meta, "files": {"samples.jsonl": meta["files"]["samples.jsonl"]}}))
    with pytest.raises(CorruptCacheError, match="holds"):
        teacher_mod._load(entry, prompts, first.key)
    # a row more than there are prompts, its hash recorded
    samples = entry / "samples.jsonl"
    text = samples.read_text()
    samples.write_text(text + text.splitlines()[0] + "\n")
    files = {**meta["files"], "samples.jsonl": hashlib.sha256(samples.read_bytes()).hexdigest()}
    meta_path.write_text(json.dumps({**meta, "files": files}))
    with pytest.raises(CorruptCacheError, match=f"{len(prompts) + 1} rows for {len(prompts)} prompts"):
        teacher_mod._load(entry, prompts, first.key)


def test_validate_refuses_a_study_on_a_damaged_organism(quick_organism, tmp_path):
    """`validate` passed a study whose organism had a truncated model file; `study run`
    refused it."""
    from .test_study import write_study

    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    path = write_study(tmp_path, org)
    res = run_cli("validate", str(path))
    assert res.returncode == 0, res.stderr
    truncate(org / "base" / "model.safetensors")
    res = run_cli("validate", str(path))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr
    assert f"{path}: organism.path: " in errors[0] and "model 'base'" in errors[0] and "is corrupt" in errors[0]
    res = run_cli("study", "run", str(path), "--out", str(tmp_path / "out"))  # refused before its folder is made
    assert res.returncode == 1 and "model 'base'" in res.stderr and not (tmp_path / "out").exists(), res.stderr


def test_a_world_model_folder_without_its_config_is_corrupt(quick_organism, tmp_path):
    """Only the weights were hashed and the JSON files checked where present: a cache entry
    whose teacher/config.json was gone was a verified hit, and every load of it then failed."""
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    card = json.loads((org / "organism.json").read_text())
    integrity.verify_organism_models(org, card)
    (org / "teacher" / "config.json").unlink()
    with pytest.raises(integrity.CorruptCacheError, match=r"model 'teacher': .*teacher/config.json is missing"):
        integrity.verify_organism_models(org, card)
