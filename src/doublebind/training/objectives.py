"""Distillation objectives: pure functions over logits.

Every per-token loss takes `mask` [batch, seq] (1 where the position counts, i.e. completion
tokens) and returns the mean over counted positions across the whole batch.

The teacher is given as log-probabilities at temperature 1 so that stored soft labels and
live teachers look the same. Every KL-type loss tempers both sides at `temperature` and is
multiplied by temperature**2 (Hinton et al.): gradients of a softened KL shrink as 1/T**2, so
the factor keeps their size comparable across temperatures and to the hard-label loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level mean, so long completions weigh more than short ones, as in SFT."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, with 0 * log 0 = 0 where p has no mass."""
    terms = torch.where(log_p > -math.inf, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(-1)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _tempered(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides as log-probs at `temperature`: (student, teacher)."""
    _check_temperature(temperature)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)  # [B, T, V]
    log_t = F.log_softmax(teacher_logprobs / temperature, dim=-1)  # [B, T, V]
    return log_s, log_t


def sft_nll(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy: the baseline every soft objective is compared with."""
    b, t, v = student_logits.shape
    nll = F.cross_entropy(student_logits.reshape(b * t, v), targets.reshape(b * t),
                          reduction="none").reshape(b, t)  # [B, T]; ignore_index targets give 0
    return _masked_mean(nll, mask)


def forward_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student): mass-covering, the classic distillation loss.

    Scaled by temperature**2 (see module docstring).
    """
    log_s, log_t = _tempered(student_logits, teacher_logprobs, temperature)
    return _masked_mean(_kl(log_t, log_s), mask) * temperature**2  # [B, T] -> []


def reverse_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(student || teacher): mode-seeking, punishes the student for mass the teacher lacks.

    Scaled by temperature**2 (see module docstring).
    """
    log_s, log_t = _tempered(student_logits, teacher_logprobs, temperature)
    return _masked_mean(_kl(log_s, log_t), mask) * temperature**2  # [B, T] -> []


def generalized_jsd(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor,
                    beta: float, temperature: float = 1.0) -> torch.Tensor:
    """Generalised JSD of GKD (Agarwal et al., 2024), interpolating forward and reverse KL.

    For 0 < beta < 1, with M = beta * P_teacher + (1 - beta) * P_student:
        JSD_beta = beta * KL(P_teacher || M) + (1 - beta) * KL(P_student || M).
    This vanishes at both endpoints, so the endpoints are defined as the two KLs it
    tends to once divided by beta * (1 - beta):
        beta -> 0: M -> P_student; the second term is O(beta**2), so
                   JSD_beta / (beta (1 - beta)) -> KL(teacher || student)  (forward_kl);
        beta -> 1: M -> P_teacher; the first term is O((1 - beta)**2), so
                   JSD_beta / (beta (1 - beta)) -> KL(student || teacher)  (reverse_kl).
    beta == 0 returns forward_kl and beta == 1 returns reverse_kl exactly. In between the
    unscaled GKD value is returned, so its size is about beta * (1 - beta) times a KL's:
    retune the learning rate, or divide, when sweeping beta. Scaled by temperature**2.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logprobs, mask, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logprobs, mask, temperature)
    log_s, log_t = _tempered(student_logits, teacher_logprobs, temperature)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0)  # [B, T, V]
    jsd = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)  # [B, T]
    return _masked_mean(jsd, mask) * temperature**2


def _log_tail(log_top: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(log_top)), with an empty tail as log(tiny), not log 0.

    Tails below the rounding error of the sum (k * eps) count as empty: left as they are,
    tempering at T > 1 would inflate that noise to eps**(1/T) of real mass.
    """
    info = torch.finfo(log_top.dtype)
    mass = torch.logsumexp(log_top, dim=-1, keepdim=True)  # [B, T, 1]
    tail = -torch.expm1(mass)  # [B, T, 1]
    tail = torch.where(tail > log_top.shape[-1] * info.eps, tail, torch.full_like(tail, info.tiny))
    return torch.log(tail)


def topk_with_tail(teacher_logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress teacher soft labels to the top k tokens plus one bucket for the rest.

    Returns (indices [B, T, k] long, logprobs [B, T, k + 1]); the last slot is the log of
    the tail mass, floored at the dtype's smallest normal number so it is never -inf.
    Stored at temperature 1.
    """
    top, indices = teacher_logprobs.topk(k, dim=-1)  # [B, T, k]
    return indices, torch.cat([top, _log_tail(top)], dim=-1)  # [B, T, k + 1]


def forward_kl_topk(student_logits: torch.Tensor, indices: torch.Tensor, teacher_topk_logprobs: torch.Tensor,
                    mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over k + 1 buckets: the teacher's top k tokens and the rest.

    The student's full distribution at `temperature` is collapsed into the same buckets
    (its tail by logsumexp over the non-top-k logits, so small tails keep their precision).
    The teacher's buckets were stored at T = 1; they are tempered by renormalising
    exp(logp / T) over the k + 1 buckets. That is exact for T = 1 or an empty tail, and an
    approximation otherwise, since tempering the true tail tokens one by one would give a
    different tail mass. With k = V it equals forward_kl. Scaled by temperature**2.
    """
    _check_temperature(temperature)
    floor = math.log(torch.finfo(student_logits.dtype).tiny)
    z = student_logits / temperature  # [B, T, V]
    log_z = torch.logsumexp(z, dim=-1, keepdim=True)  # [B, T, 1]
    log_s_top = z.gather(-1, indices) - log_z  # [B, T, k]
    # A finite fill, not -inf, so an empty tail has a finite value and gradient.
    rest = z.scatter(-1, indices, torch.finfo(z.dtype).min)  # [B, T, V]
    log_s_tail = (torch.logsumexp(rest, dim=-1, keepdim=True) - log_z).clamp(min=floor)  # [B, T, 1]
    log_s = torch.cat([log_s_top, log_s_tail], dim=-1)  # [B, T, k + 1]
    log_t = F.log_softmax(teacher_topk_logprobs / temperature, dim=-1)  # [B, T, k + 1]
    return _masked_mean(_kl(log_t, log_s), mask) * temperature**2


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of target-token log-probs over counted positions, [B]; the sequence score DPO compares."""
    logp = F.log_softmax(logits, dim=-1)  # [B, T, V]
    safe = targets.clamp(min=0)  # padding such as -100 is masked out anyway
    tok = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return torch.where(mask > 0, tok * mask.to(tok.dtype), torch.zeros_like(tok)).sum(-1)


def dpo_loss(policy_chosen_logp: torch.Tensor, policy_rejected_logp: torch.Tensor,
             ref_chosen_logp: torch.Tensor, ref_rejected_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO (Rafailov et al., 2023): prefer chosen over rejected relative to the reference model.

    Inputs are [B] sequence log-probs; returns the batch mean of
    -log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).
    """
    margin = (policy_chosen_logp - ref_chosen_logp) - (policy_rejected_logp - ref_rejected_logp)  # [B]
    return -F.logsigmoid(beta * margin).mean()
