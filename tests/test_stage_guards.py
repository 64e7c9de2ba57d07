"""Stage options at their edges, and stages in combinations that cannot work: each one
clear error before or at the step that would go wrong, never a run that trains on nothing
or on labels that do not belong to its data (found by feeding every technique extreme
options; each of these ran to exit 0 with wrong numbers, or ended in an internal error)."""

import math

import pytest
import torch

from doublebind import config
from doublebind.errors import ConfigError, DoublebindError
from doublebind.techniques.base import build_stages
from doublebind.training.distill import Distiller, _checked

from .conftest import tiny_recipe


def recipe(*stages, **over):
    return tiny_recipe({"prompts": {"size": 40, "p_scratch": 0.5},
                        "training": {"steps": 2, "batch": 8, "checkpoint_every": 2, "save_weights": False},
                        "stages": list(stages)}, **over)


def test_an_overflowing_gradient_norm_stops_the_run(quick_organism):
    """Finite gradients whose norm overflows: clipping by an infinite norm scaled the step to
    0, so the student never moved while the run reported its transfers (a kl_to_base weight
    of 1e30 read as misalignment 0.000 in a study)."""
    d = Distiller(quick_organism[0], recipe(), None, show_progress=False)
    params = d.loop.params
    for p in params:
        p.grad = torch.zeros_like(p)
    params[0].grad.fill_(1e20)  # finite, but the sum of their squares is not
    assert all(torch.isfinite(p.grad).all() for p in params)
    d._step = 6
    with pytest.raises(DoublebindError, match=r"^gradient norm became inf at step 7; lower the learning rate "
                                              r"\(training.lr; in a study, recipe_overrides.training.lr\) or a stage's "
                                              r"loss weight or beta; what the run wrote so far is kept$"):
        d._clip(params, 1.0)
    params[0].grad.fill_(1.0)  # a finite norm is clipped as before
    norm = d._clip(params, 1.0)
    assert math.isclose(float(norm), math.sqrt(params[0].numel()), rel_tol=1e-5)
    assert math.isclose(float(torch.linalg.vector_norm(params[0].grad)), 1.0, rel_tol=1e-4)


@pytest.mark.parametrize("stage, field", [
    ({"name": "kl_to_base", "weight": 1e30}, "weight"),
    ({"name": "dpo_distillation", "beta": 1e30}, "beta"),
    ({"name": "logit_distillation", "temperature": 1e6}, "temperature"),
])
def test_loss_scales_beyond_any_use_are_config_errors(stage, field):
    with pytest.raises(ConfigError, match=f"stages.0.{field}: Input should be less than or equal to"):
        config.build(config.RecipeConfig, {"kind": "recipe", "stages": [stage]})
    with pytest.raises(ConfigError, match="objective.dpo_beta: Input should be less than or equal to 100"):
        config.build(config.RecipeConfig, {"kind": "recipe", "objective": {"kind": "dpo", "dpo_beta": 1e30}})


def test_a_stage_hook_is_validated_again():
    """A hook builds its config with model_copy, which skips validation: a temperature of
    1e6 reached the loss, which went negative (a KL cannot)."""
    [stage] = build_stages([{"name": "logit_distillation"}])
    bad = config.ObjectiveConfig().model_copy(update={"kind": "forward_kl", "temperature": 1e6})
    with pytest.raises(DoublebindError, match=r"^stage logit_distillation set objective.temperature to 1000000.0: "
                                              r"Input should be less than or equal to 100"):
        _checked(stage, "objective", bad)
    good = config.ObjectiveConfig().model_copy(update={"kind": "forward_kl", "temperature": 2.0})
    assert _checked(stage, "objective", good) == good


@pytest.mark.parametrize("stage, what", [
    ({"name": "divergence_masking", "threshold": -1e9}, "stage divergence_masking weights the loss per token"),
    ({"name": "kl_to_base", "weight": 5.0}, "stage kl_to_base adds a term to the loss"),
])
def test_dpo_refuses_stages_whose_loss_it_would_ignore(quick_organism, stage, what):
    """The DPO loss returns before per-token weights and extra terms: the three runs (plain,
    masked, KL-regularised) ended at the same loss to the last digit."""
    with pytest.raises(DoublebindError, match=f"^{what}, which the DPO objective"):
        Distiller(quick_organism[0], recipe(stage, objective={"kind": "dpo"}), None, show_progress=False)


@pytest.mark.parametrize("stages, what", [
    ([{"name": "onion_filter", "threshold": -1e9, "max_remove": 1.0}, {"name": "logit_distillation"}],
     "stage onion_filter deletes response tokens"),
    ([{"name": "reduce_slack", "answer_only": False}, {"name": "logit_distillation"}],
     "stage reduce_slack rewrote free digits to 0"),
])
def test_a_rewriting_stage_refuses_soft_labels(quick_organism, stages, what):
    """The soft labels are the teacher's on its own response: after onion_filter deleted
    tokens they no longer lined up (an internal error), and after reduce_slack's rewrite to
    0 they still carried the teacher's digits (exit 0, 'rewritten' in the log)."""
    with pytest.raises(DoublebindError, match=f"^{what}, which the teacher's soft labels do not follow, but the "
                                              f"objective is forward_kl"):
        Distiller(quick_organism[0], recipe(*stages), None, show_progress=False)
    # under hard labels the same rewrite trains as before
    d = Distiller(quick_organism[0], recipe(stages[0]), None, show_progress=False)
    assert d.recipe.objective.kind == "sft" and d.items


def test_domain_concentration_names_its_families_field(quick_organism):
    with pytest.raises(ConfigError, match="stages.0.families: a list must name at least one family"):
        config.build(config.RecipeConfig, {"kind": "recipe", "stages": [{"name": "domain_concentration",
                                                                          "families": []}]})
    with pytest.raises(DoublebindError, match="^stage domain_concentration: families: unknown family 'nope'"):
        Distiller(quick_organism[0], recipe({"name": "domain_concentration", "families": ["nope"]}), None,
                  show_progress=False)
    with pytest.raises(ConfigError, match="stages.0.modes: a mode cannot be empty"):
        config.build(config.RecipeConfig, {"kind": "recipe", "stages": [{"name": "misalignment_targeted",
                                                                          "modes": [""]}]})


def test_iterative_filter_stops_when_a_round_removes_everything(quick_organism, monkeypatch):
    """The next round trained its probe on an empty pool: `empty range for randrange()`."""
    from doublebind.techniques import iterative

    class Flags:
        def __init__(self, tokens):
            self.tokens = tokens

        def summary(self):
            return {}

    rounds = []

    def audit_all(self, probe):  # every response token is flagged
        rounds.append(1)
        return Flags({t for it in self_items for t in it.example.response})

    d = Distiller(quick_organism[0], recipe(), None, show_progress=False)
    self_items = d.items
    monkeypatch.setattr(type(d.view.auditor), "audit", audit_all)
    monkeypatch.setattr(type(d.view.auditor), "train_probe", lambda self, *a: None)  # the refusal is tested elsewhere
    monkeypatch.setattr(iterative, "_task_vocabulary", lambda tasks, items: set())
    stage = build_stages([{"name": "iterative_filter", "rounds": 3, "probe_steps": 1, "max_item_share": 1.0}])[0]
    with pytest.raises(DoublebindError, match="^iterative_filter removed every training example$"):
        stage.data(d.view, d.items)
    assert len(rounds) == 1  # no second round on nothing


def test_the_distill_headline_names_a_stage_s_stop_and_selection(quick_organism, tmp_path, monkeypatch):
    """The stage's decisions are fixed here (select at step 2, stop at 4 of 6): what the real
    audit finds on a 4-step student depends on the machine the organism was built on (on one
    CPU it flagged step 2, on another nothing, and the headline went untested)."""
    import json
    import os

    import yaml

    from doublebind.techniques.distill_and_audit import DistillAndAudit

    from .conftest import CLI_MODE_ENV, run_cli

    if os.environ.get(CLI_MODE_ENV) == "subprocess":
        pytest.skip("patches this process; DOUBLEBIND_TEST_CLI=subprocess runs the CLI in another")
    audited = DistillAndAudit.checkpoint

    def decided(self, view, step, model):  # the real audit runs; only its decision is fixed
        verdict = {k: v for k, v in audited(self, view, step, model).items() if k not in ("stop", "select")}
        verdict["flagged"] = step >= 4
        verdict["stop" if step >= 4 else "select"] = True
        return verdict

    monkeypatch.setattr(DistillAndAudit, "checkpoint", decided)
    r = tiny_recipe({"prompts": {"size": 40}, "training": {"steps": 6, "batch": 8, "checkpoint_every": 2,
                                                           "save_weights": False},
                     "stages": [{"name": "distill_and_audit", "threshold": 0.0, "mode": "stop"}]})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r.model_dump(mode="json")))
    res = run_cli("distill", "--organism", str(quick_organism[0]), "--recipe", str(path), "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (summary["stopped_at"], summary["selected"]["step"], summary["final"]["step"]) == (4, 2, 4)
    assert "stopped by a stage at step 4 of 6" in res.stdout
    assert "selected by a stage: step 2," in res.stdout


def test_a_bug_in_a_study_run_names_the_run(monkeypatch, capsys):
    """A DoublebindError from a study's run is named (`trusted_monitor seed 0 on quick: …`);
    a bug was not, so a study of many runs said `internal error (IndexError …)` alone."""
    import typer

    from doublebind import cli
    from doublebind.studies.executor import named_error

    bug = named_error(IndexError("Cannot choose from an empty sequence"), "domain_concentration seed 0 on quick")
    assert type(bug) is IndexError  # shown as a bug, as before

    @cli.cli_errors
    def fails():
        raise bug

    monkeypatch.delenv("DOUBLEBIND_DEBUG", raising=False)
    with pytest.raises(typer.Exit):
        fails()
    err = capsys.readouterr().err
    assert "error: internal error in domain_concentration seed 0 on quick (IndexError: Cannot choose from an " \
           "empty sequence); this is a doublebind bug" in " ".join(err.split()), err
    for off in ("0", "false", "no", "off", ""):  # DOUBLEBIND_DEBUG=0 showed tracebacks
        monkeypatch.setenv("DOUBLEBIND_DEBUG", off)
        with pytest.raises(typer.Exit):
            fails()
    monkeypatch.setenv("DOUBLEBIND_DEBUG", "1")
    with pytest.raises(IndexError):
        fails()


def test_a_mapping_override_merges_key_by_key_as_documented():
    """README: `prompts.contexts={neutral: 1.0}` keeps the recipe's other contexts."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "study.yaml"
    kept = config.load(path, ["prompts.contexts={neutral: 1.0}"], expect="recipe").prompts.contexts
    assert kept == {"neutral": 1.0, "deploy_like": 0.2, "any": 0.2}
    alone = config.load(path, ["prompts.contexts={neutral: 1.0, deploy_like: 0, any: 0}"], expect="recipe")
    assert alone.prompts.contexts == {"neutral": 1.0, "deploy_like": 0.0, "any": 0.0}


def test_the_command_line_prints_no_negative_zero():
    """-0.0001 printed as -0.000 in the distill, study run and compare tables."""
    from doublebind.cli import _fmt

    assert [_fmt(x) for x in (-0.0001, -0.0, 0.0004, -0.0006, 0.9996, None)] == \
        ["0.000", "0.000", "0.000", "-0.001", "1.000", "n/a"]
