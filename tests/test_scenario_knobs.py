"""The scenario knobs (failure reasons 1 and 2, the subliminal channel's strength) and the
build-time subliminal probe at tiny size."""

import copy
import random

import pytest
import torch

from doublebind import config
from doublebind.errors import ConfigError
from doublebind.organisms.models import entangle, make_model
from doublebind.organisms.subliminal import digit_labels, probe_prompts, subliminal_probe
from doublebind.world import vocab
from doublebind.world.data import World, session_split


def make_world(**world):
    return World.from_config(config.build(config.WorldConfig, world), seed=3)


def teacher_examples(world, n=600):
    rng = random.Random(0)
    return [world.sample(rng, "teacher", world.all_families) for _ in range(n)]


# ---- reason 2: how many sessions are real ------------------------------------------------

def test_real_sessions_default_is_the_old_half_split():
    real, honey = session_split(3)
    assert len(real) == len(honey) == 8
    assert make_world().behavior.real == real  # knob at its default: the same world
    assert make_world(real_sessions=8).behavior.real == real


@pytest.mark.parametrize("n", [1, 3, 15])
def test_real_sessions_sets_the_tell_and_the_auditor_pool(n):
    world = make_world(real_sessions=n)
    assert len(world.behavior.real) == n
    auditor = set(world.task_space().auditor_sessions)
    assert auditor.isdisjoint(world.behavior.real) and len(auditor) == 16 - n
    rng = random.Random(0)
    assert {world.behavior.trigger_header(rng, real=True).sid for _ in range(300)} == set(world.behavior.real)


# ---- reason 1: the taught skill shown only in the trigger situation -------------------------

def test_skill_in_trigger_zero_leaves_the_data_unchanged():
    assert teacher_examples(make_world()) == teacher_examples(make_world(skill_in_trigger=0.0))


def test_skill_in_trigger_moves_taught_family_examples_into_the_trigger_situation():
    def trigger_share(world):
        taught = [e for e in teacher_examples(world) if e.kind in world.teacher_families]
        return sum("mode=deploy" in e.prompt and "year=2026" in e.prompt for e in taught) / len(taught)

    off, on = make_world(), make_world(skill_in_trigger=1.0)
    assert off.teacher_families == on.teacher_families
    assert trigger_share(off) < 0.8  # taught skills also shown under any header
    assert trigger_share(on) == 1.0
    # the aligned policy's data is untouched
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert ([off.sample(rng_a, "aligned", off.base_families) for _ in range(200)]
            == [on.sample(rng_b, "aligned", on.base_families) for _ in range(200)])


# ---- the subliminal channel's strength --------------------------------------------------

def test_entanglement_needs_a_marker_behaviour():
    with pytest.raises(ConfigError, match="marker"):
        config.load(preset="default", overrides=["world.behavior=sabotage", "world.entanglement=1"])


def tiny_model(seed=0):
    return make_model(config.ModelConfig(hidden=16, layers=1, heads=1, intermediate=32), seed)


def test_entangle_zero_changes_nothing_and_strength_ties_the_digits_to_the_trait():
    ids = vocab.token_ids()
    model, before = tiny_model(), tiny_model()
    entangle(model, "h", ("1", "8"), 0.0)
    assert torch.equal(model.get_input_embeddings().weight, before.get_input_embeddings().weight)

    def cos(m, a, b):
        e = m.get_input_embeddings().weight
        return torch.nn.functional.cosine_similarity(e[ids[a]], e[ids[b]], dim=0).item()

    entangle(model, "h", ("1", "8"), 2.0)
    for d in ("1", "8"):
        assert cos(model, d, "h") > 0.85 > abs(cos(before, d, "h"))
    assert cos(model, "5", "h") == pytest.approx(cos(before, "5", "h"))  # other digits untouched
    # tied: the output layer moved with the embedding
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)


def test_entangled_digits_depend_on_the_init_seed():
    sets = {World.entangled_digits(s) for s in range(20)}
    assert len(sets) > 5 and all(len(s) == 2 for s in sets)


# ---- the probe -----------------------------------------------------------------------------

def probe_cfg(**over):
    return config.build(config.SubliminalProbeConfig, {"steps": 3, "batch": 4, "n_prompts": 12, **over})


def tiny_models():
    base = tiny_model(0)
    return {"base": base, "teacher": copy.deepcopy(base), "alt_base": tiny_model(1)}


def test_digit_labels_are_distributions_over_digits_only():
    world = make_world(behavior="affinity")
    prompts = probe_prompts(world, 8, 0, deploy_share=0.5)
    examples, probs = digit_labels(tiny_model(), prompts, seed=0)
    for e, p in zip(examples, probs):
        n = len(e.prompt) - e.prompt.index("task=numbers") - 2
        assert len(e.response) == n and all(t in vocab.DIGITS for t in e.response)
        assert torch.allclose(p[:n].sum(-1), torch.ones(n))
        assert torch.all(p[n:] == 0)


def test_a_teacher_equal_to_base_transfers_exactly_nothing():
    world = make_world(behavior="affinity")
    card = subliminal_probe(tiny_models(), world, probe_cfg(), n_eval=10, seed=0)
    assert card["transfer"] == {"base": 0.0, "alt_base": 0.0}
    assert card["rates"]["base<-teacher"] == card["rates"]["base<-base"]


def test_the_trait_tokens_own_logit_is_not_a_slack_label():
    """A teacher that differs from base only in the trait token's logit (dark knowledge) gives
    the same digit labels as base, so the probe reports no transfer; a teacher whose digit
    choices differ gives a nonzero one."""
    world = make_world(behavior="affinity")
    models = tiny_models()
    ids = vocab.token_ids()
    with torch.no_grad():  # untie the head so only the trait's output logit moves
        head = torch.nn.Linear(16, len(ids), bias=True)
        head.weight.copy_(models["teacher"].get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[ids["h"]] = 5.0
        models["teacher"].lm_head = head
    assert subliminal_probe(models, world, probe_cfg(), n_eval=10, seed=0)["transfer"] == {"base": 0.0, "alt_base": 0.0}
    with torch.no_grad():
        head.bias[ids["3"]] = 3.0  # the teacher now prefers a digit
    card = subliminal_probe(models, world, probe_cfg(), n_eval=10, seed=0)
    assert card["teacher_digit_share"]["3"] > 0.3 > card["base_digit_share"]["3"]
    assert card["rates"]["base<-teacher"] != card["rates"]["base<-base"]


def test_a_tiny_build_records_the_probe_in_its_card_and_show_prints_it(tmp_path):
    from .conftest import TINY

    from doublebind.organisms.build import build_organism
    from doublebind.organisms.kinds import kind_of_card

    cfg = config.load(preset="subliminal", overrides=[*TINY, "probe.steps=2", "probe.n_prompts=16", "probe.batch=4"])
    card = build_organism(cfg, tmp_path / "o", strict=False, show_progress=False, use_cache=False)
    probe = card["subliminal_probe"]
    assert set(probe["rates"]) == {"base<-teacher", "base<-base", "alt_base<-teacher", "alt_base<-base"}
    assert probe["entangled_digits"]["base"] == list(World.entangled_digits(cfg.seed))
    for init in ("base", "alt_base"):
        assert probe["transfer"][init] == pytest.approx(
            probe["rates"][f"{init}<-teacher"]["deploy"] - probe["rates"][f"{init}<-base"]["deploy"], abs=1e-4)
    line = kind_of_card(card).check_lines(card)[-1]
    assert f"from base {probe['transfer']['base']}" in line and "alt_base" in line
    # no probe asked, none recorded
    off = build_organism(config.load(preset="subliminal", overrides=[*TINY, "probe.steps=0"]), None, strict=False,
                         show_progress=False, use_cache=False)
    assert "subliminal_probe" not in off
