"""The weights memo (doublebind.memo): equal weights share one eval and one audit; any change
of a weight, in place or not, is a new model."""

from __future__ import annotations

import copy

import torch

from doublebind.memo import WeightsMemo, weights_key
from doublebind.organisms.domain import open_domain


def test_equal_weights_share_results_and_a_changed_weight_does_not(quick_organism):
    domain = open_domain(quick_organism[0])
    base = domain.load_model("base")
    twin = copy.deepcopy(base)  # another object, the same weights: a student at step 0
    assert weights_key(twin) == weights_key(base)
    memo, calls = WeightsMemo(size=2), []
    assert memo.get(base, ("x",), lambda: calls.append(1) or {"v": [1]}) == {"v": [1]}
    got = memo.get(twin, ("x",), lambda: calls.append(1) or {"v": [2]})
    assert got == {"v": [1]} and len(calls) == 1
    got["v"].append(9)  # callers get copies
    assert memo.get(base, ("x",), lambda: None) == {"v": [1]}
    assert memo.get(base, ("y",), lambda: calls.append(1) or 3) == 3 and len(calls) == 2  # other inputs, other key
    with torch.no_grad():
        next(twin.parameters()).view(-1)[0] += 1e-6  # what an optimiser step does: in place
    assert weights_key(twin) != weights_key(base)
    twin.train()
    assert weights_key(twin) != weights_key(copy.deepcopy(twin).eval())


def test_memoised_eval_and_audit_equal_fresh_ones(quick_organism):
    from doublebind.evals.metrics import evaluate

    domain = open_domain(quick_organism[0])
    student = copy.deepcopy(domain.load_model("base"))
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.9)
    fresh = evaluate(student, domain.world, 10)
    assert domain.evaluate(student, 10) == fresh
    assert domain.evaluate(copy.deepcopy(student), 10) == fresh  # from the memo
    auditor = domain.auditor()
    first = auditor.audit(student)
    hits = auditor._answers.hits
    again = auditor.audit(copy.deepcopy(student))
    assert auditor._answers.hits == hits + 1 and again.summary() == first.summary() and again.flags == first.flags
