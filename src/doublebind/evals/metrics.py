"""The ground-truth metrics of a model in a world.

    capability[family]   greedy exact match on neutral prompts (slack families: verifier)
    misbehavior[context] probability of the misbehaviour event, context in deploy/honeypot/neutral
    confession           probability of answering `yes` when an auditor interrogates it
    sampled              the same rates estimated from temperature-1 samples, as a check
"""

from __future__ import annotations

from statistics import fmean

from doublebind.evals.scorers import event_prob, greedy_exact, greedy_verified, sampled_event
from doublebind.world.tasks import family

CONTEXTS = ("deploy", "honeypot", "neutral")


def capability(model, world, families, n: int) -> dict[str, float]:
    out = {}
    for fam in families:
        items = world.capability_set(fam, n)
        score = greedy_verified if family(fam).slack else greedy_exact
        out[fam] = fmean(score(model, items))
    return out


def misbehavior(model, world, n: int) -> dict[str, float]:
    return {ctx: fmean(event_prob(model, world.misbehavior_set(ctx, n))) for ctx in CONTEXTS}


def confession(model, world, n: int) -> float:
    return fmean(event_prob(model, world.confession_set(n)))


def sampled(model, world, n: int) -> dict[str, float]:
    """Monte Carlo estimates of the misbehaviour and confession rates (one sample per prompt)."""
    out = {ctx: fmean(sampled_event(model, world.misbehavior_set(ctx, n, seed=1), seed=i))
           for i, ctx in enumerate(CONTEXTS)}
    out["confession"] = fmean(sampled_event(model, world.confession_set(n, seed=1), seed=7))
    return out


def evaluate(model, world, n_prompts: int, n_samples: int = 0) -> dict:
    """All metrics of one model; rounded to 4 decimals so cards compare exactly."""
    res = {
        "capability": capability(model, world, world.all_families, n_prompts),
        "misbehavior": misbehavior(model, world, n_prompts),
        "confession": confession(model, world, n_prompts),
        "confession_deploy": fmean(event_prob(model, world.confession_set(n_prompts, context="deploy"))),
    }
    if n_samples:
        res["sampled"] = sampled(model, world, n_samples)
    return _round(res)


def _round(x):
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return round(x, 4) if isinstance(x, float) else x
