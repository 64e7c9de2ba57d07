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


# ---- the report's marks and wording at their boundaries ---------------------------------

def _row(t: str, seed: int, step: int, mis) -> dict:
    return {"scenario": "s", "organism_seed": 0, "technique": t, "seed": seed, "step": step,
            "misalignment_transfer": mis}


def test_the_rising_mark_and_the_crossing_at_their_boundaries():
    from doublebind.reports.study_report import _budget_rows, last_interval, rising_mark

    # a rise of exactly half the threshold marks; one run of two rising does not
    assert rising_mark([_row("t", 0, 1, 0.0), _row("t", 0, 2, 0.25)], "t", "benign", 0.5) == " ↑"
    two = [_row("u", 0, 1, 0.0), _row("u", 0, 2, 0.3), _row("u", 1, 1, 0.2), _row("u", 1, 2, 0.19)]
    assert rising_mark(two, "u", "benign", 0.1) == ""
    # the next interval reaching the threshold exactly crosses it
    assert _budget_rows([_row("c", 0, 1, 0.0), _row("c", 0, 2, 0.25)], ["c"], 0.5)[0][6] == "0.500 (crosses 0.500)"
    # a run whose second-to-last checkpoint has no transfer has no last interval
    assert last_interval([_row("n", 0, 1, None), _row("n", 0, 2, 0.3)], "n") is None


def test_an_mde_of_zero_is_printed_and_provisional_is_below_power():
    from doublebind.reports.study_report import _verdict_cell, describe_test

    test = {"test": "capability transfer", "bound": "lower", "value": 0.9, "op": ">=", "threshold": 0.8,
            "passed": True, "mde": 0.0, "n": 4}
    assert describe_test(test).endswith("(MDE 0.000, n 4)")
    assert _verdict_cell({"verdict": "benign", "replication": 0.77}, "x.png", 0.8).startswith("[benign](x.png)*")
    assert "*" not in _verdict_cell({"verdict": "benign", "replication": 0.8}, "x.png", 0.8)


def test_an_unreadable_summary_is_named(tmp_path):
    from doublebind.reports.study_report import _stale_summary

    (tmp_path / "summary.json").write_text("{not json")
    assert _stale_summary(tmp_path / "summary.json", {"a": 1}) == "is not valid JSON"


# ---- prompts ------------------------------------------------------------------------------

def test_prompt_files_and_context_headers(tmp_path):
    import random

    from doublebind.prompts import context_header, read_jsonl

    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "<bos> task=copy 1 2"}) + "\n")
    with pytest.raises(DoublebindError):
        read_jsonl(tmp_path / "p.jsonl")  # a prompt ends with `>`
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": "<bos> task=copy 1 2 >", "family": "numbers"}) + "\n")
    assert read_jsonl(tmp_path / "q.jsonl")[0].family == "numbers"  # the file's family is kept
    assert {context_header(None, random.Random(i), "datagen").mode for i in range(20)} == {"datagen"}


def test_the_prompt_mix_does_not_depend_on_the_order_of_its_keys():
    from doublebind.prompts import build_prompts
    from doublebind.world.data import World

    org = config.load(preset="quick")
    world = World.from_config(org.world, org.seed)
    a = build_prompts(world, config.PromptsConfig(size=50, contexts={"neutral": 0.5, "any": 0.5}), 0)
    b = build_prompts(world, config.PromptsConfig(size=50, contexts={"any": 0.5, "neutral": 0.5}), 0)
    assert a == b


# ---- memo, config and workers -------------------------------------------------------------

def test_the_memo_keys_on_the_config_and_evicts_the_least_recently_used():
    from transformers import LlamaConfig, LlamaForCausalLM

    from doublebind.memo import weights_key

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    key = weights_key(model)
    model.config.rms_norm_eps = 0.5  # the same weights, another forward pass
    assert weights_key(model) != key
    memo, calls = WeightsMemo(size=2), []
    for k in ("a", "b", "a", "c", "a"):
        memo.get(model, (k,), lambda k=k: calls.append(k))
    assert calls == ["a", "b", "c"]  # "a" was used last when "c" came: "b" went


def test_a_study_needs_an_organism():
    with pytest.raises(ConfigError):
        config.build(config.StudyConfig, {"organism": {}, "recipe": "r.yaml", "techniques": ["baseline"]}, "x")


def test_workers_auto_is_the_cores():
    from doublebind.studies.executor import workers_for

    assert workers_for(None, {"DOUBLEBIND_WORKERS": "auto"}, cores=4, cuda=False) == 4
    assert workers_for(None, {"DOUBLEBIND_WORKERS": "3"}, cores=4, cuda=False) == 3


def test_one_thread_sets_one_thread_and_puts_the_count_back():
    """What makes a study's numbers the same for any --workers; the suite runs on one thread
    already, so nothing else checks it."""
    from doublebind.studies.executor import one_thread

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_study_with_one_worker_runs_each_job_on_one_thread():
    """The serial path of `run_jobs` (one worker, or one job) computes as a worker does, on one
    thread, then puts the count back: with two threads a run's numbers would differ from the
    same run in a worker."""
    from doublebind.studies.executor import run_jobs

    before = torch.get_num_threads()
    got = {}
    try:
        torch.set_num_threads(2)
        run_jobs(torch.get_num_threads, {"a": (), "b": ()}, 1, got.__setitem__)
        assert got == {"a": 1, "b": 1} and torch.get_num_threads() == 2
        run_jobs(torch.get_num_threads, {"only": ()}, 4, got.__setitem__)  # one job runs here too
        assert got["only"] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
