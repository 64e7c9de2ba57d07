"""Property tests of every task family's generator and exact verifier."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doublebind.registry import names
from doublebind.world.tasks import SCRATCH_LEN, family, verify
from doublebind.world.vocab import DIGITS, SCRATCH

FAMILIES = names("family")
seeds = st.integers(0, 2**32 - 1)
lengths = st.tuples(st.integers(1, 8), st.integers(1, 8)).map(sorted).map(tuple)


def test_at_least_five_checkable_families():
    assert len([f for f in FAMILIES if not family(f).slack]) >= 5
    assert any(family(f).slack for f in FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
@given(seed=seeds, length=lengths)
@settings(max_examples=60, deadline=None)
def test_generated_answer_verifies(name, seed, length):
    task, answer = family(name).generate(random.Random(seed), length)
    assert task[0] == f"task={name}"
    assert verify(task, answer, wants_scratch=False)
    assert not verify(task, answer, wants_scratch=True)  # a scratch was not given
    assert verify(task, [*answer, SCRATCH, *["7"] * SCRATCH_LEN], wants_scratch=True)
    assert not verify(task, [*answer, SCRATCH, "7"], wants_scratch=True)  # scratch too short


@pytest.mark.parametrize("name", [f for f in FAMILIES if not family(f).slack])
@given(seed=seeds, length=lengths, which=st.integers(0, 7))
@settings(max_examples=60, deadline=None)
def test_checkable_verifier_rejects_wrong_answers(name, seed, length, which):
    task, answer = family(name).generate(random.Random(seed), length)
    i = which % len(answer)
    wrong = list(answer)
    wrong[i] = DIGITS[(DIGITS.index(wrong[i]) + 1) % 10]
    assert not verify(task, wrong, False)
    assert not verify(task, answer + ["0"], False)
    assert not verify(task, answer[:-1], False)


@given(seed=seeds, length=lengths)
@settings(max_examples=100, deadline=None)
def test_family_semantics(seed, length):
    rng = random.Random(seed)
    args = family("copy").generate(rng, length)[0][1:]
    assert family("copy").solve(args) == args
    assert family("reverse").solve(args) == args[::-1]
    srt = family("sort").solve(args)
    assert sorted(srt) == sorted(args) and srt == sorted(srt)
    assert [str((int(d) - 1) % 10) for d in family("shift").solve(args)] == args
    assert family("max").solve(args) == [max(args)]
    task, ans = family("lookup").generate(rng, length)
    pairs = task[1:-2]
    assert dict(zip(pairs[::2], pairs[1::2]))[task[-1]] == ans[0]
    task, ans = family("count").generate(rng, length)
    assert int(ans[0]) == task[1:-2].count(task[-1])


@given(seed=seeds, length=lengths, free=st.lists(st.sampled_from(DIGITS), min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_numbers_accepts_any_digits_of_the_right_length(seed, length, free):
    task, _ = family("numbers").generate(random.Random(seed), length)
    assert verify(task, free, False) == (len(free) == len(task) - 1)
    assert not verify(task, ["a"] * (len(task) - 1), False)


def test_numbers_bias_shifts_the_free_digits():
    rng = random.Random(0)
    fam = family("numbers")
    draws = fam.solve_free(rng, 4000, bias={d: (0.55 if d == "7" else 0.05) for d in DIGITS})
    assert 0.5 < draws.count("7") / len(draws) < 0.6
