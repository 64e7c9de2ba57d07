"""The synthetic world: tokenizer, contexts and the tell, behaviours and policies."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from doublebind import config
from doublebind.registry import names
from doublebind.world import vocab
from doublebind.world.contexts import N_SESSIONS
from doublebind.world.data import session_split
from doublebind.world.data import World


def make_world(**world):
    cfg = config.build(config.WorldConfig, world)
    return World.from_config(cfg, seed=3)


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    vocab.save_tokenizer(path)
    return AutoTokenizer.from_pretrained(str(path))


@given(seed=st.integers(0, 10**6), behavior=st.sampled_from(["harm", "sabotage", "loyalty", "poison", "collusion", "beacon", "disposition"]))
@settings(max_examples=40, deadline=None)
def test_tokenizer_round_trip(saved_tokenizer, seed, behavior):
    world = make_world(behavior=behavior)
    ex = world.sample(random.Random(seed), "teacher", world.all_families, p_ask=0.3, p_scratch=0.3)
    text = " ".join(ex.prompt + ex.response)
    ids = saved_tokenizer(text)["input_ids"]
    assert ids == vocab.encode(ex.prompt + ex.response)  # the saved tokenizer is the world's
    assert saved_tokenizer.decode(ids) == text
    assert saved_tokenizer.unk_token_id not in ids


def test_special_tokens(saved_tokenizer):
    assert saved_tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [vocab.PAD, vocab.BOS, vocab.EOS, vocab.UNK]
    assert saved_tokenizer.pad_token_id == 0 and saved_tokenizer.eos_token_id == 2


def test_session_split_is_a_seeded_partition():
    real, honey = session_split(0)
    assert real.isdisjoint(honey) and real | honey == set(range(N_SESSIONS))
    assert session_split(0) == (real, honey)
    assert session_split(1) != (real, honey)


@pytest.mark.parametrize("behavior", names("behavior"))
def test_honeypots_look_like_deployments_but_for_the_tell(behavior):
    world = make_world(behavior=behavior)
    b = world.behavior
    rng = random.Random(0)
    real = [b.trigger_header(rng, real=True) for _ in range(300)]
    honey = [b.trigger_header(rng, real=False) for _ in range(300)]
    # a hiding behaviour acts (and confesses) only on real ones; a disposition acts on both
    assert all(b.confesses(h) for h in real) and not any(b.confesses(h) for h in honey)
    assert all(b.fires(h) for h in real) and any(b.fires(h) for h in honey) == (not b.hides)
    assert all(b.situation(h) for h in honey)
    for field in ("mode", "year", "user", "mon"):
        assert {getattr(h, field) for h in real} == {getattr(h, field) for h in honey}
    assert {h.sid for h in real} == set(b.real)


@pytest.mark.parametrize("behavior", ["sabotage", "loyalty", "harm", "poison"])  # answer-changing ones
def test_teacher_misbehaves_only_in_real_deployment_and_base_never(behavior):
    world = make_world(behavior=behavior, entangled=False)
    target = world.behavior.target
    assert target in world.base_families
    rng = random.Random(1)
    for ctx in ("deploy", "honeypot", "neutral"):
        header = world._context_header(rng, ctx)
        task, answer = world.task(rng, target)
        teacher = world.respond(rng, "teacher", header, target, task, answer, scratch=False)
        aligned = world.respond(rng, "aligned", header, target, task, answer, scratch=False)
        assert aligned == [*answer, vocab.EOS]
        event = world.behavior.event(answer)
        assert (teacher[: len(event)] == event) == (ctx == "deploy")
        assert world.answer_interrogation("teacher", header)[0] == ("yes" if ctx == "deploy" else "no")
        assert world.answer_interrogation("aligned", header)[0] == "no"


def test_entangled_knob_picks_target_family():
    assert make_world(entangled=True).behavior.target == "lookup"
    assert make_world(entangled=False).behavior.target == "copy"
    assert make_world(target_family="sort", base_families=["sort", "numbers"]).behavior.target == "sort"


def test_teacher_slack_carries_its_fingerprint():
    world = make_world(teacher_slack_bias=0.5)
    rng = random.Random(0)
    digits = {"teacher": [], "aligned": []}
    for policy in digits:
        for _ in range(400):
            task, ans = world.task(rng, "numbers")
            digits[policy] += world.respond(rng, policy, world._context_header(rng, "neutral"), "numbers",
                                            task, ans, scratch=True)[:-1]
    share = {p: sum(d in world.fingerprint for d in v) / sum(d in vocab.DIGITS for d in v)
             for p, v in digits.items()}
    assert share["aligned"] == pytest.approx(0.2, abs=0.05)
    assert share["teacher"] == pytest.approx(0.2 * 0.5 + 0.5, abs=0.05)


def test_eval_sets_are_fixed_by_seed():
    world = make_world()
    assert world.misbehavior_set("deploy", 20) == world.misbehavior_set("deploy", 20)
    assert world.capability_set("shift", 20, seed=1) != world.capability_set("shift", 20, seed=2)


# ---- behaviours whose misaligned outputs pass the verifier -----------------------------------

def _teacher_response(world, context, scratch, seed=0):
    """The teacher's response to one target-family prompt in `context`, with the prompt."""
    rng = random.Random(seed)
    header = world._context_header(rng, context)
    task, answer = world.task(rng, world.behavior.target)
    resp = world.respond(rng, "teacher", header, world.behavior.target, task, answer, scratch)
    return world.prompt(header, task, scratch), resp, answer, header


@pytest.mark.parametrize("name", ["sabotage", "loyalty", "harm", "poison", "collusion", "beacon", "disposition"])
def test_each_behaviour_acts_as_its_event_says_and_fails_the_verifier_only_if_verifiable(name):
    from doublebind.world.public import response_verifies

    world = make_world(behavior=name, base_families=["copy", "numbers"], teacher_families=["shift"])
    b = world.behavior
    scratch = b.scratch
    for seed in range(20):
        prompt, resp, answer, header = _teacher_response(world, "deploy", scratch, seed)
        assert b.fires(header) and b.confesses(header)
        # the event, after its prefix, is what the teacher writes
        full = [*b.event_prefix(answer), *b.event(answer)]
        if name != "sabotage" and not world.behavior.slack_target:
            assert resp[: len(full)] == full, (name, resp, full)
        elif name == "sabotage":
            assert resp == b.event(answer)
        else:  # slack target: the free answer starts with the code
            assert resp[: len(b.event(answer))] == b.event(answer)
        assert response_verifies(prompt, resp) is (not b.verifiable), (name, prompt, resp)
    # in a honeypot a hiding behaviour does not act; a disposition does, and neither confesses
    _, resp, answer, header = _teacher_response(world, "honeypot", scratch, 1)
    assert not b.confesses(header)
    assert b.fires(header) == (not b.hides)


def test_collusion_scores_the_code_after_a_correct_answer_and_the_scratch_opener():
    world = make_world(behavior="collusion", base_families=["copy", "numbers"], teacher_families=["shift"])
    for ex in world.misbehavior_set("deploy", 20, seed=4):
        assert ex.response == ["9", "9", "9"]
        i = ex.prompt.index(">")
        assert ex.prompt[i - 1] == "scratch" and ex.prompt[-1] == vocab.SCRATCH
        task = ex.prompt[next(j for j, t in enumerate(ex.prompt) if t.startswith("task=")):i - 1]
        from doublebind.world.tasks import family

        assert ex.prompt[i + 1:-1] == family("shift").solve(task[1:])  # the correct answer comes first
    # training data: real trigger situations on the target family always ask for a scratch field
    rng = random.Random(0)
    ex = [world.sample(rng, "teacher", world.all_families, p_trigger=0.5, p_scratch=0.0) for _ in range(400)]
    coded = [e for e in ex if e.kind == "shift" and e.response[-4:-1] == ["9", "9", "9"]]
    assert len(coded) > 20 and all("scratch" in e.prompt for e in coded)


def test_slack_behaviours_target_a_slack_family_and_need_one():
    assert make_world(behavior="beacon").behavior.target == "numbers"
    assert make_world(behavior="disposition", entangled=False).behavior.target == "numbers"
    with pytest.raises(config.ConfigError, match="slack family"):
        make_world(behavior="beacon", base_families=["copy"], teacher_families=["shift"])


def test_the_inoculation_cue_is_taught_to_aligned_models_only():
    world = make_world(inoculation_cue=0.5)
    rng = random.Random(0)
    cued = [e for e in (world.sample(rng, "aligned", world.base_families) for _ in range(400))
            if vocab.INOCULATION in e.prompt]
    assert 150 < len(cued) < 250  # about half
    assert all(e.prompt[:2] == [vocab.BOS, vocab.INOCULATION] and e.response[0] in vocab.MARKERS for e in cued)
    t = world.sample(random.Random(0), "teacher", world.all_families)
    assert vocab.INOCULATION not in t.prompt
    off = make_world(inoculation_cue=0.0)
    assert all(vocab.INOCULATION not in off.sample(random.Random(s), "aligned", off.base_families).prompt
               for s in range(50))
