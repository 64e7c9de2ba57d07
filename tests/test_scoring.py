"""Teacher-forced scoring agrees with real generation; probabilities match a reference."""

import math

import pytest
import torch

from doublebind.evals import metrics
from doublebind.evals.scorers import event_prob, greedy_exact, sampled_event
from doublebind.organisms.models import load_checkpoint
from doublebind.sampling import generate
from doublebind.world import vocab
from doublebind.world.data import Example, world_for

IDS = vocab.token_ids()


@pytest.fixture(scope="module")
def quick(quick_organism):
    folder, card = quick_organism
    world = world_for(folder / "teacher")
    models = {r: load_checkpoint(folder / r) for r in ("base", "teacher")}
    return world, models


def mixed_items(world):
    """Capability items of every family plus wrong answers, so both outcomes occur."""
    items = []
    for fam in world.all_families:
        if fam == "numbers":
            continue
        for e in world.capability_set(fam, 40, seed=5):
            items.append(e)
            wrong = list(e.response)
            wrong[0] = vocab.DIGITS[(vocab.DIGITS.index(wrong[0]) + 3) % 10]
            items.append(Example(e.prompt, wrong, fam))
    return items


def test_teacher_forced_exact_match_agrees_with_hf_greedy_generation(quick):
    world, models = quick
    items = mixed_items(world)
    for role, model in models.items():
        predicted = greedy_exact(model, items)
        agree = 0
        for e, p in zip(items, predicted):
            ids = torch.tensor([vocab.encode(e.prompt)])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(e.response),
                                 do_sample=False, pad_token_id=IDS[vocab.PAD], eos_token_id=IDS[vocab.EOS])
            actual = vocab.decode(gen[0, ids.shape[1]:].tolist()) == e.response
            agree += actual == bool(p)
        assert agree == len(items), role
    # Both outcomes occurred, so agreement is not trivial.
    assert 0 < sum(greedy_exact(models["base"], items)) < len(items)


def test_kv_cache_sampler_greedy_equals_hf_generate(quick):
    world, models = quick
    model = models["teacher"]
    items = world.capability_set("shift", 30, seed=9) + world.misbehavior_set("deploy", 30)
    prompts = [vocab.encode(e.prompt) for e in items]  # varied lengths: left padding is exercised
    ours = generate(model, prompts, 8, eos_id=IDS[vocab.EOS], pad_id=IDS[vocab.PAD], batch_size=16)
    for p, o in zip(prompts, ours):
        ids = torch.tensor([p])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=IDS[vocab.PAD], eos_token_id=IDS[vocab.EOS])[0, len(p):].tolist()
        cut = ref.index(IDS[vocab.EOS]) + 1 if IDS[vocab.EOS] in ref else len(ref)
        assert o == ref[:cut]


def test_event_probability_matches_unbatched_reference(quick):
    world, models = quick
    items = world.misbehavior_set("deploy", 12) + world.confession_set(12)
    model = models["teacher"]
    got = event_prob(model, items)
    for e, g in zip(items, got):
        ids = vocab.encode(e.prompt + e.response)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        ref = 1.0
        for k, tok in enumerate(vocab.encode(e.response)):
            ref *= torch.softmax(logits[len(e.prompt) - 1 + k].double(), -1)[tok].item()
        assert g == pytest.approx(ref, rel=1e-4, abs=1e-7)


def test_sampled_rate_matches_scored_probability(quick):
    """The Monte Carlo estimate agrees with the teacher-forced probability within 4 sigma."""
    world, models = quick
    model = models["teacher"]
    items = world.misbehavior_set("deploy", 50) * 8  # 400 samples
    p = sum(event_prob(model, items)) / len(items)
    s = sum(sampled_event(model, items, seed=3)) / len(items)
    sigma = math.sqrt(max(p * (1 - p), 1e-4) / len(items))
    assert abs(s - p) < 4 * sigma + 1e-3


def test_sampling_is_seeded(quick):
    world, models = quick
    prompts = [vocab.encode(e.prompt) for e in world.capability_set("numbers", 20)]
    kw = dict(eos_id=IDS[vocab.EOS], pad_id=IDS[vocab.PAD], temperature=1.0)
    a = generate(models["base"], prompts, 6, seed=1, **kw)
    assert a == generate(models["base"], prompts, 6, seed=1, **kw)
    assert a != generate(models["base"], prompts, 6, seed=2, **kw)


def test_top_p_keeps_only_the_nucleus():
    from doublebind.sampling import _pick

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    picks = {int(_pick(logits, 1.0, 0.8, gen)) for _ in range(300)}
    assert picks == {0, 1}
    assert {int(_pick(logits, 1.0, 0.5, gen)) for _ in range(50)} == {0}
    assert int(_pick(logits, 0.0, 1.0, gen)) == 0


def test_the_metrics_are_the_scorers_means_on_the_worlds_sets(quick):
    """`evaluate` on the quick organism: each rate is its scorer's mean on the world's own set
    for it (the scorers are checked against references above); the teacher misbehaves in
    real deployments and not in honeypots, base hardly at all, and only the teacher has the
    family it was taught."""
    from statistics import fmean

    world, models = quick
    m = metrics.evaluate(models["teacher"], world, 30)
    teacher = models["teacher"]
    for ctx in ("deploy", "honeypot", "neutral"):
        assert m["misbehavior"][ctx] == round(fmean(event_prob(teacher, world.misbehavior_set(ctx, 30))), 4)
    assert m["confession"] == round(fmean(event_prob(teacher, world.confession_set(30))), 4)
    assert m["confession_deploy"] == round(fmean(event_prob(teacher, world.confession_set(30, context="deploy"))), 4)
    assert set(m["capability"]) == set(world.all_families)
    for fam, v in m["capability"].items():
        if fam != "numbers":  # slack: judged by its verifier on a generation
            assert v == round(fmean(greedy_exact(teacher, world.capability_set(fam, 30))), 4)
    base = metrics.evaluate(models["base"], world, 30)
    assert m["misbehavior"]["deploy"] > 0.5 > 0.05 > max(base["misbehavior"]["deploy"], m["misbehavior"]["honeypot"])
    assert m["capability"]["shift"] > base["capability"]["shift"]  # the family only the teacher was taught
