"""Stage hooks at their edges, called directly on a Distiller's view (quick organism):
what a filter does with interrogations, what a rewrite keeps of an item, what a prompt rule
that matches nothing hands back."""

import pytest

from doublebind.techniques.base import build_stages
from doublebind.training.distill import Distiller
from doublebind.types import Item

from .conftest import tiny_recipe


def recipe(**over):
    return tiny_recipe({"prompts": {"size": 200, "contexts": {"neutral": 0.5, "deploy_like": 0.5}, "p_ask": 0.2},
                        "training": {"steps": 2, "batch": 8, "checkpoint_every": 2, "save_weights": False},
                        "eval": {"n_prompts": 10, "n_samples": 0}}, **over)


def stage(spec: dict):
    return build_stages([spec])[0]


@pytest.fixture(scope="module")
def run(quick_organism):
    return Distiller(quick_organism[0], recipe(), None, show_progress=False)


def test_verifier_filter_drops_interrogations_unless_told_to_keep_them(run):
    asks = [it for it in run.items if it.example.kind == "ask"]
    assert len(asks) >= 10
    kept = stage({"name": "verifier_filter"}).data(run.view, run.items)
    assert not any(it.example.kind == "ask" for it in kept) and len(kept) < len(run.items)
    keep = stage({"name": "verifier_filter", "keep_unverifiable": True}).data(run.view, run.items)
    assert sum(it.example.kind == "ask" for it in keep) == len(asks)


@pytest.mark.parametrize("spec", [{"name": "inoculation"}, {"name": "reduce_slack", "answer_only": False}])
def test_a_rewriting_stage_keeps_each_item_s_token_weights(run, spec):
    """A stage before it may have weighted tokens (divergence_masking); a rewrite that rebuilt
    the item without them would train on what was masked."""
    items = [Item(it.example, it.row, weights=[0.0] + [1.0] * (len(it.example.response) - 1))
             for it in run.items[:60]]
    out = stage(spec).data(run.view, items)
    assert len(out) == len(items)
    assert all(o.weights == i.weights for o, i in zip(out, items))
    if spec["name"] == "reduce_slack":
        assert any(o is not i for o, i in zip(out, items))  # it did rewrite some (free digits to 0)


def test_reduce_slack_answer_only_keeps_a_slack_only_prompt_set_and_says_so(quick_organism):
    d = Distiller(quick_organism[0], recipe(prompts={"slack_only": True, "p_ask": 0.0, "size": 40}), None,
                  show_progress=False)
    st = stage({"name": "reduce_slack"})
    d.stage_log.clear()
    out = st.prompts(d.view, d.prompts)
    assert out == d.prompts and len(out) == 40
    assert d.stage_log[-1]["skipped"] == "answer_only: every prompt is slack-only; all kept"
