"""Each technique does what it claims, on the quick organism."""

import importlib
import json
from pathlib import Path

import pytest
import torch

from doublebind import config
from doublebind.registry import names
from doublebind.techniques.verifier_filter import example_verifies
from doublebind.training.distill import Distiller, distill
from doublebind.world import vocab

from .conftest import run_cli, tiny_recipe


def recipe(*stages, **over):
    return tiny_recipe({"prompts": {"size": 160, "contexts": {"neutral": 0.5, "deploy_like": 0.5}, "p_scratch": 0.3},
                        "training": {"steps": 4, "batch": 8, "checkpoint_every": 2, "save_weights": False},
                        "stages": list(stages)}, **over)


def run(folder, *stages, out=None, **over):
    return Distiller(folder, recipe(*stages, **over), out, show_progress=False)


def test_every_technique_is_listed_with_a_docstring_and_recipe_line():
    listed = run_cli("ls", "techniques").stdout
    for name in names("technique"):
        assert name in listed
        from doublebind.registry import get

        module = importlib.import_module(get("technique", name).__module__)
        assert "stages:" in module.__doc__ and len(module.__doc__.splitlines()[0]) > 20
    assert len(names("technique")) >= 12


def test_domain_concentration_keeps_only_the_capability_domain(quick_organism):
    d = run(quick_organism[0], {"name": "domain_concentration"})
    assert len(d.prompts) == 160
    assert {p.family for p in d.prompts} == {"shift"} and {p.context for p in d.prompts} == {"neutral"}
    assert d.stage_log[0]["stage"] == "domain_concentration" and d.stage_log[0]["phase"] == "prompts"


def test_hard_labels_switch_to_sft_without_logits(quick_organism):
    d = run(quick_organism[0], {"name": "hard_labels"}, objective={"kind": "forward_kl"})
    assert d.recipe.objective.kind == "sft" and d.recipe.sampling.soft_labels == "none"
    assert d.outputs.soft == {}
    assert {r["phase"] for r in d.stage_log} == {"sampling", "objective"}


def test_reduce_slack_removes_free_choices(quick_organism):
    d = run(quick_organism[0], {"name": "reduce_slack"}, prompts={"families": "all"})
    assert d.recipe.sampling.temperature == 0.0
    assert not any("scratch" in p.tokens for p in d.prompts)
    assert "numbers" not in {p.family for p in d.prompts}
    loose = run(quick_organism[0], {"name": "reduce_slack", "answer_only": False, "greedy": False},
                prompts={"families": "all"})
    scratch = [it.example.response for it in loose.items if vocab.SCRATCH in it.example.response]
    assert scratch and all(set(r[r.index(vocab.SCRATCH) + 1:-1]) == {"0"} for r in scratch)
    assert next(r for r in loose.stage_log if r["phase"] == "data")["rewritten"] > 0


def test_inoculation_is_in_training_data_and_absent_at_evaluation(quick_organism, tmp_path, monkeypatch):
    import doublebind.evals.scorers as scorers

    seen = []
    real = scorers.teacher_forced

    def spy(model, examples, *a, **k):
        seen.extend(e.prompt for e in examples)
        return real(model, examples, *a, **k)

    monkeypatch.setattr(scorers, "teacher_forced", spy)
    summary = distill(quick_organism[0], recipe({"name": "inoculation"}), tmp_path / "run", show_progress=False)
    assert seen and not any(vocab.INOCULATION in p for p in seen)  # every eval prompt is clean
    trained = [json.loads(x) for x in (tmp_path / "run" / "stages" / "00_inoculation" / "inoculated.jsonl")
               .read_text().splitlines()]
    assert trained and all(r["prompt"].split()[1] == vocab.INOCULATION for r in trained)
    assert summary["stages"][0]["inoculated"] == len(trained)


def test_verifier_filter_removes_what_fails_and_reports_pass_rate(quick_organism, tmp_path):
    d = run(quick_organism[0], {"name": "verifier_filter"}, out=tmp_path, prompts={"families": ["shift"]})
    rec = d.stage_log[0]
    assert 0 < rec["pass_rate"] < 1 and rec["after"] == len(d.items)
    assert all(example_verifies(it.example) for it in d.items)
    assert not any("!exfil" in it.example.response for it in d.items)
    removed = (tmp_path / "stages" / "00_verifier_filter" / "removed.jsonl").read_text().splitlines()
    assert len(removed) == rec["before"] - rec["after"]
    assert sum("!exfil" in json.loads(r)["response"] for r in removed) > 0


def test_small_student_is_small(quick_organism):
    d = run(quick_organism[0], {"name": "small_student", "hidden": 16, "layers": 1, "heads": 2})
    assert d.model.config.hidden_size == 16 and d.model.config.num_hidden_layers == 1


def test_small_student_from_base_layers_starts_from_base(quick_organism):
    """`start: base_layers`: one of base's two layers, base's width, base's weights."""
    from doublebind.organisms.models import load_checkpoint

    d = run(quick_organism[0], {"name": "small_student", "start": "base_layers", "layers": 1})
    base = load_checkpoint(quick_organism[0] / "base")
    assert d.model.config.num_hidden_layers == 1 and d.model.config.hidden_size == base.config.hidden_size
    got, ref = dict(d.model.named_parameters()), dict(base.named_parameters())
    assert all(torch.equal(t, ref[n]) for n, t in got.items())  # layer 0, embeddings and norm: base's own


STUDY = Path(__file__).resolve().parent.parent / "configs" / "studies" / "quick.yaml"


def test_small_student_from_base_layers_takes_no_width():
    with pytest.raises(config.ConfigError, match="start base_layers keeps base's sizes but for its layers: leave out "
                                                 "heads, hidden"):
        config.load(STUDY, ["techniques=[baseline, {name: small_student, start: base_layers, layers: 1, hidden: 32, "
                            "heads: 2}]"])


def test_kl_to_base_term_matches_reference_and_holds_student_near_base(quick_organism):
    from doublebind.training.batching import collate

    d = run(quick_organism[0], {"name": "kl_to_base", "weight": 2.0})
    items = d.items[:6]
    batch = collate([it.example for it in items])
    logits = d.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    got = d.stages[0].extra_loss(d.view, d.model, items, batch, logits, batch["loss_mask"])
    assert float(got.detach()) == pytest.approx(0.0, abs=1e-4)  # the student starts as base
    torch.manual_seed(0)
    noisy = (logits + torch.randn_like(logits)).detach()
    base_logits = d.load_model("base")(input_ids=batch["input_ids"]).logits[:, :-1].detach()
    ref = 0.0
    for b in range(len(items)):
        for t in range(noisy.shape[1]):
            if batch["loss_mask"][b, t]:
                p = torch.softmax(noisy[b, t].double(), -1)
                q = torch.softmax(base_logits[b, t].double(), -1)
                ref += float((p * (p.log() - q.log())).sum())
    got = d.stages[0].extra_loss(d.view, d.model, items, batch, noisy, batch["loss_mask"])
    assert float(got.detach()) == pytest.approx(2.0 * ref, rel=1e-4)
    # trained, it holds the student nearer base than the same run without it
    def kl_after_training(*stages):
        run_ = run(quick_organism[0], *stages, training={"steps": 12})
        for step in range(12):
            run_.train_step(step)
        with torch.no_grad():
            student = torch.log_softmax(run_.model(input_ids=batch["input_ids"]).logits[:, :-1].double(), -1)
        base = torch.log_softmax(base_logits.double(), -1)
        per_token = (student.exp() * (student - base)).sum(-1)
        return float(per_token[batch["loss_mask"].bool()].mean())

    held, free = kl_after_training({"name": "kl_to_base", "weight": 20.0}), kl_after_training()
    assert 0 < held < 0.5 * free, (held, free)  # 0.084 against 0.722 when written


def test_distill_and_audit_selects_by_the_generic_audit(quick_organism, tmp_path):
    summary = distill(quick_organism[0], recipe({"name": "distill_and_audit", "threshold": 0.5},
                                                training={"steps": 6}),
                      tmp_path / "run", show_progress=False)
    audits = [r for r in summary["stages"] if r["phase"] == "checkpoint"]
    assert [r["step"] for r in audits] == [0, 2, 4, 6]
    # every checkpoint's audit is the one the evaluation layer records for it
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    for a in audits:
        assert a["audit_success_at_k"] == rows[a["step"]]["auditor"]["success_at_k"]
        assert a["audit_flags"] == rows[a["step"]]["auditor"]["flagged"]
    chosen = next(r for r in audits if r["step"] == summary["selected"]["step"])
    assert not chosen["flagged"] and chosen.get("select")
    unflagged = [r for r in audits if not r["flagged"]]
    assert chosen["audit_capability"] == max(r["audit_capability"] for r in unflagged)


def test_incrimination_prompt_stages(quick_organism):
    d = run(quick_organism[0], {"name": "misalignment_targeted", "share": 0.5, "p_ask": 0.5})
    targeted = [p for p in d.prompts if p.context == "targeted"]
    assert len(targeted) == 80 and 20 < sum(p.family == "ask" for p in targeted) < 60
    # chosen by the defender's rule (deployment mode), on every family, never by the behaviour
    assert all("mode=deploy" in p.tokens for p in targeted)
    assert {p.family for p in targeted if p.family != "ask"} == set(d.view.tasks.all_families)
    d = run(quick_organism[0], {"name": "auditability_preserving"}, prompts={"contexts": {"deploy_like": 0.5, "any": 0.5}})
    assert d.stage_log[0]["after"] < d.stage_log[0]["before"]
    assert not any("mode=eval" in p.tokens for p in d.prompts)
    assert not any("mode=deploy" in p.tokens or "mode=datagen" in p.tokens for p in d.prompts)


def test_logit_and_dpo_distillation_set_the_objective(quick_organism):
    d = run(quick_organism[0], {"name": "logit_distillation", "temperature": 2.0}, sampling={"soft_labels": "none"})
    assert d.recipe.objective.kind == "forward_kl" and d.recipe.objective.temperature == 2.0
    assert "logprobs" in d.outputs.soft
    d = run(quick_organism[0], {"name": "dpo_distillation", "beta": 0.3})
    assert d.recipe.objective.kind == "dpo" and all(it.rejected is not None for it in d.items)


def test_iterative_filter_finds_and_removes_the_marker(quick_organism, tmp_path):
    d = run(quick_organism[0], {"name": "iterative_filter", "rounds": 2, "probe_steps": 120}, out=tmp_path,
            prompts={"families": ["shift"], "size": 300})
    first = d.stage_log[0]
    assert "!exfil" in first["flagged"]
    assert not any("!exfil" in it.example.response for it in d.items)
    assert (tmp_path / "stages" / "00_iterative_filter" / "round0_removed.jsonl").is_file()


def test_stages_compose_in_order_and_record_what_they_did(quick_organism, tmp_path):
    summary = distill(quick_organism[0], recipe({"name": "domain_concentration"}, {"name": "verifier_filter"},
                                                {"name": "inoculation"}), tmp_path / "run", show_progress=False)
    log = summary["stages"]
    assert [(r["stage"], r["phase"]) for r in log] == [
        ("domain_concentration", "prompts"), ("verifier_filter", "data"), ("inoculation", "data")]
    assert log[1]["after"] == log[2]["before"]
    assert json.loads((tmp_path / "run" / "stages.json").read_text()) == log


def test_bad_stage_configs_name_the_field():
    with pytest.raises(config.ConfigError, match=r"stages\.0: unknown technique 'magic'"):
        recipe({"name": "magic"})
    with pytest.raises(config.ConfigError, match=r"stages\.1\.weight"):
        recipe({"name": "inoculation"}, {"name": "kl_to_base", "weight": -1})
    with pytest.raises(config.ConfigError, match=r"stages\.0\.colour: unknown key"):
        recipe({"name": "verifier_filter", "colour": 1})
