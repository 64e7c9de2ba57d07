"""`objective.normalise`: a step's loss as the mean over responses of each response's own
(weighted) token mean, checked against that formula computed one item at a time."""

import pytest
import torch

from doublebind import config
from doublebind.organisms.models import make_model
from doublebind.studies.run import recipe_hash
from doublebind.training import objectives as obj
from doublebind.training.distill import _units, micro_loss

from .conftest import tiny_recipe
from .test_packing import V, _items


def _soft(items, kind):
    g = torch.Generator().manual_seed(1)
    logprobs = torch.log_softmax(torch.randn(len(items), 8, V, generator=g), -1)
    if kind == "topk":
        idx, top = obj.topk_with_tail(logprobs, 4)
        return {"indices": idx, "logprobs": top}
    return {"logprobs": logprobs}


def _reference(model, it, soft, kind) -> torch.Tensor:
    """One item's loss from its own forward pass: the per-token NLL (sft) or KL(teacher ||
    student) (forward_kl), averaged over its response with its weights."""
    e = it.example
    ids = torch.tensor([e.prompt + e.response])
    logits = model(input_ids=ids).logits[0, len(e.prompt) - 1 : len(e.prompt) + len(e.response) - 1].float()
    log_s = torch.log_softmax(logits, -1)
    if kind == "sft":
        per_token = -log_s[torch.arange(len(e.response)), torch.tensor(e.response)]
    else:
        log_t = soft["logprobs"][it.row, : len(e.response)]
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    w = torch.tensor(it.weights if it.weights is not None else [1.0] * len(e.response))
    return (per_token * w).sum() / w.sum()


def _weighted(items):
    items[2].weights = [0.5, 2.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0][: len(items[2].example.response)]
    items[4].weights = [0.0] * len(items[4].example.response)  # weighs nothing, and is not counted
    return items


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kind", ["sft", "forward_kl"])
def test_a_step_averages_each_response_then_the_responses(kind, packed):
    model = make_model(config.ModelConfig(hidden=16, layers=2, heads=2, intermediate=32), seed=0)
    items = _weighted(_items(12, seed=3))
    assert len(items[2].example.response) == 1  # a response of one token at weight 0.5
    soft = _soft(items, kind)
    response = config.ObjectiveConfig(kind=kind, normalise="response")
    token = config.ObjectiveConfig(kind=kind)
    with torch.no_grad():
        step = micro_loss(model, items, soft, response, pack=packed) / _units(items, response)
        reference = torch.stack([_reference(model, it, soft, kind) for it in items if it.units() > 0]).mean()
        by_token = micro_loss(model, items, soft, token, pack=packed) / _units(items, token)
    assert _units(items, response) == len(items) - 1
    torch.testing.assert_close(step, reference, rtol=1e-5, atol=1e-6)
    assert abs(step - by_token) > 1e-4  # responses of uneven length: the two averages differ


@pytest.mark.parametrize("kind", ["jsd", "topk", "sft", "forward_kl"])
def test_the_other_objectives_sum_their_responses_means_alike(kind):
    """A micro-batch's loss is the sum of its items' own (each item alone, as the reference
    above checks for sft and forward_kl), whatever the objective; each item's is its
    token-normalised loss over its weights' sum. That last failed for a micro-batch of one
    item whose weights summed below 1 (0.5): its token-normalised loss was half what it is."""
    model = make_model(config.ModelConfig(hidden=16, layers=2, heads=2, intermediate=32), seed=0)
    items = _weighted(_items(12, seed=3))
    soft = _soft(items, kind)
    ocfg = config.ObjectiveConfig(kind="forward_kl" if kind == "topk" else kind, normalise="response")
    with torch.no_grad():
        batch = micro_loss(model, items, soft, ocfg)
        alone = sum(micro_loss(model, [it], soft, ocfg) for it in items)
        # and each item's own is its token-normalised loss divided by its weights' sum
        tokens = config.ObjectiveConfig(kind=ocfg.kind)
        for it in items:
            got = micro_loss(model, [it], soft, ocfg)
            want = micro_loss(model, [it], soft, tokens) / it.units() if it.units() > 0 else torch.zeros(())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    assert sum(len(it.example.response) != it.units() for it in items) >= 2  # the division is not by 1 alike


def test_the_gradient_is_the_same_packed_and_padded():
    model = make_model(config.ModelConfig(hidden=16, layers=2, heads=2, intermediate=32), seed=0)
    items = _items(16, seed=4)
    ocfg = config.ObjectiveConfig(kind="sft", normalise="response")
    grads = []
    for packed in (False, True):
        model.zero_grad()
        micro_loss(model, items, {}, ocfg, pack=packed).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_the_default_keeps_the_recipe_hash_and_response_moves_it():
    plain = tiny_recipe({})
    assert plain.objective.normalise == "token"
    dump = plain.model_dump(mode="json")
    assert recipe_hash(config.build(config.RecipeConfig, dump)) == recipe_hash(plain)
    dump["objective"]["normalise"] = "response"
    assert recipe_hash(config.build(config.RecipeConfig, dump)) != recipe_hash(plain)
    dump["objective"]["normalise"] = "sequence"
    with pytest.raises(config.ConfigError, match="normalise"):
        config.build(config.RecipeConfig, dump)
