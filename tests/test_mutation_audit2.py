"""Changes a second mutation audit (74 hand-made edits to the report, the study executor,
the teacher-outputs cache, the stamps, the subliminal replication, the memo and the config)
found unnoticed by the suite, each pinned here by an input on which the original and the
edit differ. Every test failed on its edit."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from doublebind import config, integrity
from doublebind.errors import ConfigError, DoublebindError
from doublebind.integrity import CorruptCacheError, file_sha256, verify_file
from doublebind.memo import WeightsMemo
from doublebind.teacher import outputs_key
from doublebind.types import Prompt

from .test_report import study  # noqa: F401 (the fixture)


# ---- the teacher-outputs cache key: every field that changes the outputs ----------------

def test_the_teacher_outputs_key_covers_seed_organism_and_top_k():
    p = [Prompt(["<bos>", "task=copy", "1", ">"], "copy", "neutral")]
    s = config.SamplingConfig(soft_labels="topk")
    key = outputs_key("org", p, s, 0, "w")
    assert outputs_key("org", p, s, 1, "w") != key  # another seed samples other answers
    assert outputs_key("a", p, s, 0) != outputs_key("b", p, s, 0)  # Hugging Face: no weights hash given
    assert outputs_key("org", p, s.model_copy(update={"top_k": s.top_k // 2}), 0, "w") != key
    assert outputs_key("org", p, s, 0, "w") == key


# ---- the memo: every part of the key counts -----------------------------------------------

def test_the_memo_keys_on_every_extra_and_every_weight():
    model = torch.nn.Linear(64, 64)
    memo, calls = WeightsMemo(), []
    for n in (10, 200):
        assert memo.get(model, ("eval", n), lambda n=n: calls.append(n) or f"n={n}") == f"n={n}"
    assert calls == [10, 200]
    with torch.no_grad():
        model.weight[-1, -1] += 1.0  # the last element of the largest tensor
    assert memo.get(model, ("eval", 10), lambda: "changed") == "changed"


# ---- the hash stamps: a same-size rewrite with its mtime set back is still caught ------

def test_a_stamp_is_not_trusted_when_only_the_ctime_moved(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "RACY_NS", 0)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"A" * 4096)
    sha = file_sha256(f)
    time.sleep(0.05)
    verify_file(f, sha, "m")  # stamps it
    st = f.stat()
    time.sleep(0.05)
    f.write_bytes(b"B" * 4096)  # same size, other bytes
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back; the ctime cannot be
    with pytest.raises(CorruptCacheError, match="is corrupt"):
        verify_file(f, sha, "m")


# ---- the report -------------------------------------------------------------------------

def test_a_fresh_summary_is_not_called_stale(study):  # noqa: F811
    from doublebind.reports.study_report import write_report

    md, _ = write_report(study, command="doublebind report runs/x")
    assert "summary.json on disk" not in md.read_text()  # its provenance is not part of the rows


def test_an_unverified_organism_is_reported_as_such(study):  # noqa: F811
    from doublebind.reports.study_report import write_report

    card_path = study / "organisms" / "default-o0" / "organism.json"
    card = json.loads(card_path.read_text())
    card["verified"] = False
    card_path.write_text(json.dumps(card))
    md, _ = write_report(study, command="doublebind report runs/x")
    assert "synth-default (NOT verified)" in md.read_text()


# ---- the subliminal replication: the teacher is never trained on the aux logits ---------

def test_the_teacher_never_trains_its_aux_logits():
    from doublebind.replicate import subliminal_digits as sd

    setup = sd.Setup(aux=3, teacher_epochs=1, n_noise=256, distill_batch=128, distill_epochs=1)
    x, y, _, _ = sd.digits()
    model = sd.mlp([64, 16, 13], torch.Generator().manual_seed(0))
    before = model[-1].weight[10:].clone(), model[-1].bias[10:].clone()
    sd.train_teacher(model, x, y, setup, torch.Generator().manual_seed(1))
    assert torch.equal(before[0], model[-1].weight[10:]) and torch.equal(before[1], model[-1].bias[10:])
    assert not torch.equal(model[-1].weight[:10], sd.mlp([64, 16, 13], torch.Generator().manual_seed(0))[-1].weight[:10])


# ---- config: combinations that cannot run are refused -----------------------------------

@pytest.mark.parametrize("overrides, needle", [
    (["objective.kind=jsd", "sampling.soft_labels=topk"], "top-k soft labels support forward_kl only"),
    (["objective.kind=forward_kl", "objective.on_policy=0.5", "sampling.soft_labels=topk"], "on_policy"),
])
def test_recipe_combinations_that_cannot_run_are_refused(overrides, needle):
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "hard_sft.yaml"
    with pytest.raises((ConfigError, DoublebindError), match=needle):
        config.load(recipe, overrides, expect="recipe")


def test_a_study_names_a_technique_once(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("kind: study\nname: s\norganism: {preset: quick}\nrecipe: r.yaml\n"
                     "techniques: [baseline, verifier_filter, verifier_filter]\nseeds: [0]\n")
    with pytest.raises((ConfigError, DoublebindError), match="a technique is listed twice"):
        config.load(study, expect="study")
