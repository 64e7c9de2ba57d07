"""Distillation objectives against plain-Python references computed in double precision."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from doublebind.training.objectives import (
    dpo_loss,
    forward_kl,
    forward_kl_topk,
    generalized_jsd,
    reverse_kl,
    sequence_logprob,
    sft_nll,
    topk_with_tail,
)

B, T, V = 2, 4, 6


def make(seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=dtype) * scale  # [batch, seq, vocab]
    teacher = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=dtype) * scale, -1)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]], dtype=dtype)
    return student, teacher, targets, mask


# ---- references: lists and math only ----

def ref_probs(row, temp=1.0):
    m = max(x / temp for x in row)
    e = [math.exp(x / temp - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def ref_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def ref_masked_mean(per_pos, mask):
    num = sum(v * m for rv, rm in zip(per_pos, mask) for v, m in zip(rv, rm))
    return num / max(1.0, sum(sum(r) for r in mask))


def ref_per_pos(student, teacher, fn, temp=1.0):
    s, t = student.tolist(), teacher.tolist()
    return [[fn(ref_probs(t[b][i], temp), ref_probs(s[b][i], temp)) for i in range(T)] for b in range(B)]


def ref_jsd(pt, ps, beta):
    m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
    return beta * ref_kl(pt, m) + (1 - beta) * ref_kl(ps, m)


# ---- SFT ----

def test_sft_nll_matches_reference():
    student, _, targets, mask = make()
    s, tg = student.tolist(), targets.tolist()
    per = [[-math.log(ref_probs(s[b][i])[tg[b][i]]) for i in range(T)] for b in range(B)]
    expected = ref_masked_mean(per, mask.tolist())
    assert sft_nll(student, targets, mask).item() == pytest.approx(expected, rel=1e-12)


# ---- KLs ----

@pytest.mark.parametrize("temp", [1.0, 2.0, 0.5])
def test_forward_kl_matches_reference(temp):
    student, teacher, _, mask = make()
    per = ref_per_pos(student, teacher, lambda pt, ps: ref_kl(pt, ps), temp)
    expected = ref_masked_mean(per, mask.tolist()) * temp**2
    assert forward_kl(student, teacher, mask, temp).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("temp", [1.0, 2.0, 0.5])
def test_reverse_kl_matches_reference(temp):
    student, teacher, _, mask = make()
    per = ref_per_pos(student, teacher, lambda pt, ps: ref_kl(ps, pt), temp)
    expected = ref_masked_mean(per, mask.tolist()) * temp**2
    assert reverse_kl(student, teacher, mask, temp).item() == pytest.approx(expected, rel=1e-10)


def test_temperature_is_hinton_scaled():
    """At T the loss is T**2 times the KL of the softened distributions, and T=1 is unscaled."""
    student, teacher, _, mask = make()
    base = forward_kl(student / 3.0, torch.log_softmax(teacher / 3.0, -1), mask, 1.0)
    assert forward_kl(student, teacher, mask, 3.0).item() == pytest.approx(9.0 * base.item(), rel=1e-12)


def test_kls_zero_when_equal_and_nonnegative():
    student, teacher, _, mask = make()
    same = torch.log_softmax(student, -1)
    for fn in (forward_kl, reverse_kl):
        assert fn(student, same, mask).abs().item() < 1e-12
        assert fn(student, teacher, mask).item() > 0
    assert generalized_jsd(student, same, mask, 0.3).abs().item() < 1e-12


def test_forward_kl_handles_teacher_zeros():
    student, teacher, _, mask = make()
    teacher = teacher.clone()
    teacher[..., 0] = -math.inf
    teacher = torch.log_softmax(teacher, -1)
    per = ref_per_pos(student, teacher, lambda pt, ps: ref_kl(pt, ps))
    assert forward_kl(student, teacher, mask).item() == pytest.approx(ref_masked_mean(per, mask.tolist()), rel=1e-10)


# ---- masking and gradients, every per-token loss ----

LOSSES = {
    "sft": lambda s, t, y, m: sft_nll(s, y, m),
    "fkl": lambda s, t, y, m: forward_kl(s, t, m, 2.0),
    "rkl": lambda s, t, y, m: reverse_kl(s, t, m, 2.0),
    "jsd0": lambda s, t, y, m: generalized_jsd(s, t, m, 0.0),
    "jsd": lambda s, t, y, m: generalized_jsd(s, t, m, 0.4, 2.0),
    "jsd1": lambda s, t, y, m: generalized_jsd(s, t, m, 1.0),
    "topk": lambda s, t, y, m: forward_kl_topk(s, *topk_with_tail(t, 3), m, 2.0),
    "topkV": lambda s, t, y, m: forward_kl_topk(s, *topk_with_tail(t, V), m),
    "seq": lambda s, t, y, m: sequence_logprob(s, y, m).sum(),
}


def _losses(student, teacher, targets, mask):
    return {name: fn(student, teacher, targets, mask) for name, fn in LOSSES.items()}


def test_masked_positions_do_not_count():
    student, teacher, targets, mask = make()
    before = _losses(student, teacher, targets, mask)
    off = (mask == 0).unsqueeze(-1)
    g = torch.Generator().manual_seed(7)
    student2 = torch.where(off, torch.randn(B, T, V, generator=g, dtype=student.dtype) * 10, student)
    teacher2 = torch.where(off, torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=student.dtype), -1), teacher)
    targets2 = torch.where(mask == 0, (targets + 1) % V, targets)
    after = _losses(student2, teacher2, targets2, mask)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # and the counted positions do count
    student3 = torch.where(off, student, student + torch.randn(B, T, V, generator=g, dtype=student.dtype))
    changed = _losses(student3, teacher, targets, mask)
    for name in before:
        assert not torch.equal(before[name], changed[name]), name


def test_empty_mask_gives_zero():
    student, teacher, targets, mask = make()
    zero = torch.zeros_like(mask)
    for name, value in _losses(student, teacher, targets, zero).items():
        assert value.item() == 0.0, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite(dtype):
    student, teacher, targets, mask = make(dtype=dtype)
    for name, fn in LOSSES.items():
        s = student.clone().requires_grad_(True)
        fn(s, teacher, targets, mask).backward()
        assert torch.isfinite(s.grad).all(), name
        assert s.grad.abs().sum() > 0, name


# ---- generalised JSD ----

@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temp", [1.0, 1.5])
def test_jsd_matches_reference(beta, temp):
    student, teacher, _, mask = make()
    per = ref_per_pos(student, teacher, lambda pt, ps: ref_jsd(pt, ps, beta), temp)
    expected = ref_masked_mean(per, mask.tolist()) * temp**2
    assert generalized_jsd(student, teacher, mask, beta, temp).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_jsd_endpoints_are_exactly_the_kls(temp):
    student, teacher, _, mask = make()
    assert torch.equal(generalized_jsd(student, teacher, mask, 0.0, temp), forward_kl(student, teacher, mask, temp))
    assert torch.equal(generalized_jsd(student, teacher, mask, 1.0, temp), reverse_kl(student, teacher, mask, temp))
    assert forward_kl(student, teacher, mask).item() != pytest.approx(reverse_kl(student, teacher, mask).item())


def test_jsd_scaled_limits_match_endpoints():
    """JSD_beta / (beta (1 - beta)) tends to KL(teacher||student) at 0 and KL(student||teacher) at 1."""
    student, teacher, _, mask = make(scale=1.0)
    eps = 1e-4
    lo = generalized_jsd(student, teacher, mask, eps) / (eps * (1 - eps))
    hi = generalized_jsd(student, teacher, mask, 1 - eps) / (eps * (1 - eps))
    assert lo.item() == pytest.approx(forward_kl(student, teacher, mask).item(), rel=1e-2)
    assert hi.item() == pytest.approx(reverse_kl(student, teacher, mask).item(), rel=1e-2)
    assert lo.item() != pytest.approx(hi.item(), rel=1e-2)


@settings(max_examples=25, deadline=None)
@given(beta=st.floats(0.01, 0.99), seed=st.integers(0, 10_000))
def test_jsd_swap_symmetry(beta, seed):
    """JSD_beta(teacher, student) == JSD_{1-beta}(student, teacher)."""
    student, teacher, _, mask = make(seed)
    a = generalized_jsd(student, teacher, mask, beta)
    b = generalized_jsd(teacher, torch.log_softmax(student, -1), mask, 1 - beta)
    assert a.item() == pytest.approx(b.item(), rel=1e-9, abs=1e-14)
    assert a.item() >= 0


@pytest.mark.parametrize("beta", [-0.1, 1.1, float("nan")])
def test_jsd_rejects_bad_beta(beta):
    student, teacher, _, mask = make()
    with pytest.raises(ValueError):
        generalized_jsd(student, teacher, mask, beta)


def test_temperature_must_be_positive():
    student, teacher, _, mask = make()
    with pytest.raises(ValueError):
        forward_kl(student, teacher, mask, 0.0)


# ---- top-k soft labels ----

def test_topk_with_tail_shapes_and_mass():
    _, teacher, _, _ = make()
    idx, top = topk_with_tail(teacher, 3)
    assert idx.shape == (B, T, 3) and idx.dtype == torch.long
    assert top.shape == (B, T, 4)
    assert torch.allclose(top.exp().sum(-1), torch.ones(B, T, dtype=top.dtype), atol=1e-12)
    t = teacher.tolist()
    for b in range(B):
        for i in range(T):
            order = sorted(range(V), key=lambda j: -t[b][i][j])[:3]
            assert sorted(idx[b, i].tolist()) == sorted(order)
            tail = 1 - sum(math.exp(t[b][i][j]) for j in order)
            assert top[b, i, -1].item() == pytest.approx(math.log(tail), rel=1e-10)


def test_topk_full_vocab_tail_is_finite():
    _, teacher, _, _ = make(dtype=torch.float32)
    _, top = topk_with_tail(teacher, V)
    assert torch.isfinite(top).all()
    assert torch.allclose(top.exp().sum(-1), torch.ones(B, T), atol=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_full_vocab_equals_forward_kl(temp, dtype):
    student, teacher, _, mask = make(dtype=dtype)
    idx, top = topk_with_tail(teacher, V)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(forward_kl_topk(student, idx, top, mask, temp), forward_kl(student, teacher, mask, temp),
                          rtol=0, atol=tol)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_topk_matches_reference(temp):
    student, teacher, _, mask = make()
    k = 2
    idx, top = topk_with_tail(teacher, k)
    s, ix, tp = student.tolist(), idx.tolist(), top.tolist()
    per = []
    for b in range(B):
        row = []
        for i in range(T):
            ps = ref_probs(s[b][i], temp)
            q = [ps[j] for j in ix[b][i]] + [sum(ps[j] for j in range(V) if j not in ix[b][i])]
            p = ref_probs(tp[b][i], temp)  # teacher buckets renormalised at temp
            row.append(ref_kl(p, q))
        per.append(row)
    expected = ref_masked_mean(per, mask.tolist()) * temp**2
    assert forward_kl_topk(student, idx, top, mask, temp).item() == pytest.approx(expected, rel=1e-10)


# ---- DPO ----

def test_sequence_logprob_matches_reference():
    student, _, targets, mask = make()
    s, tg, m = student.tolist(), targets.tolist(), mask.tolist()
    expected = [sum(math.log(ref_probs(s[b][i])[tg[b][i]]) for i in range(T) if m[b][i]) for b in range(B)]
    got = sequence_logprob(student, targets, mask)
    assert got.shape == (B,)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_sequence_logprob_ignores_padding_targets():
    student, _, targets, mask = make()
    padded = torch.where(mask == 0, torch.full_like(targets, -100), targets)
    assert torch.equal(sequence_logprob(student, padded, mask), sequence_logprob(student, targets, mask))


def test_dpo_matches_hand_computation():
    pc = torch.tensor([-3.0, -5.0, -2.0], dtype=torch.float64)
    pr = torch.tensor([-4.0, -4.5, -6.0], dtype=torch.float64)
    rc = torch.tensor([-3.5, -5.0, -2.5], dtype=torch.float64)
    rr = torch.tensor([-3.8, -4.0, -5.0], dtype=torch.float64)
    beta = 0.5
    # margins: (0.5 - -0.2)=0.7, (0 - -0.5)=0.5, (0.5 - -1)=1.5
    expected = sum(math.log1p(math.exp(-beta * m)) for m in (0.7, 0.5, 1.5)) / 3
    assert dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(expected, rel=1e-12)
    assert dpo_loss(pc, pr, rc, rr).item() == pytest.approx(
        sum(math.log1p(math.exp(-0.1 * m)) for m in (0.7, 0.5, 1.5)) / 3, rel=1e-12)


def test_dpo_decreases_with_chosen_margin():
    zeros = torch.zeros(2)
    values = [dpo_loss(torch.full((2,), c), zeros, zeros, zeros).item() for c in (-2.0, 0.0, 2.0)]
    assert values[0] > values[1] > values[2]
    assert values[1] == pytest.approx(math.log(2))


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_topk_over_a_wider_vocabulary_equals_forward_kl(temp):
    """k = V = 64 in float32 at T up to 4: the rounding left in the tail (below k * eps) must
    count as empty, or tempering inflates it (a cut at eps alone gave 0.068 here)."""
    g = torch.Generator().manual_seed(5)
    student = torch.randn(2, 4, 64, generator=g) * 3
    teacher = torch.log_softmax(torch.randn(2, 4, 64, generator=g) * 3, -1)
    mask = torch.ones(2, 4)
    idx, top = topk_with_tail(teacher, 64)
    assert torch.allclose(forward_kl_topk(student, idx, top, mask, temp), forward_kl(student, teacher, mask, temp),
                          rtol=0, atol=1e-5)
