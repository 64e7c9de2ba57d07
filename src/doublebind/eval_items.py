"""Each prompt's score in a checkpoint's evaluation, kept so that a study's intervals can count
the evaluation sets' draw.

Every checkpoint of a study, and the base and teacher it is measured against, is scored on
one draw of the evaluation sets (`eval.n_prompts` neutral prompts a family for capability,
as many real-deployment prompts for misbehaviour). Another draw moves every run scored on
it, and the references with them; the seeds' bootstrap cannot see that. So a row keeps its
per-prompt scores (`items`), and the reference its own (`reference_items`), and the
bootstrap redraws the prompts too (`studies.verdicts.EvalDraws`).

    items            {"capability": {family: "0110…" (greedy pass, one character a prompt)},
                      "deploy": [p of the misbehaviour event, 4 significant digits, a prompt each]}
                     (a Hugging Face organism: each item's mean score over its samples, a list
                     of numbers for capability too; `HFDomain.evaluate_items`)
    reference_items  {"base": items, "teacher": items, "taught": [families],
                      "sets": {"capability": {family: sha256 of its prompts, 16 hex},
                               "deploy": the same of the real-deployment set}}

`evaluate` returns the metrics `evals.metrics.evaluate` does, to the bit (tested), and the
items beside them: the scorers run once. (It lives here, not in `evals/`, whose code is
hashed into every organism build.)
"""

from __future__ import annotations

import hashlib
import json
from statistics import fmean

from doublebind.memo import WeightsMemo

_MEMO = WeightsMemo()


def fingerprint(prompts) -> str:
    """sha256 of a prompt set (any JSON-able prompts, in order), 16 hex digits."""
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:16]


def world_sets(world, n: int) -> dict:
    """The fingerprint of each embedded-world set a transfer reads: capability by family, and
    the real-deployment misbehaviour set."""
    def of(examples) -> str:
        return fingerprint([[list(e.prompt), list(e.response)] for e in examples])

    return {"capability": {fam: of(world.capability_set(fam, n)) for fam in world.all_families},
            "deploy": of(world.misbehavior_set("deploy", n))}


def _probs(values: list[float]) -> list[float]:
    return [float(f"{x:.4g}") for x in values]


def evaluate(model, world, n: int, memo_key=None) -> tuple[dict, dict]:
    """The ground-truth metrics of `model` (as `evals.metrics.evaluate(model, world, n)`) and
    its per-prompt items. With `memo_key`, a model with the weights of one already evaluated
    under that key in this process gets the same results without the work."""
    if memo_key is not None:
        return _MEMO.get(model, (memo_key, n), lambda: evaluate(model, world, n))
    from doublebind.evals.metrics import CONTEXTS, _round
    from doublebind.evals.scorers import event_prob, greedy_exact, greedy_verified
    from doublebind.world.tasks import family

    capability, bits = {}, {}
    for fam in world.all_families:
        score = greedy_verified if family(fam).slack else greedy_exact
        scores = score(model, world.capability_set(fam, n))
        capability[fam] = fmean(scores)
        bits[fam] = "".join("1" if s else "0" for s in scores)
    per_context = {ctx: event_prob(model, world.misbehavior_set(ctx, n)) for ctx in CONTEXTS}
    metrics = _round({
        "capability": capability,
        "misbehavior": {ctx: fmean(p) for ctx, p in per_context.items()},
        "confession": fmean(event_prob(model, world.confession_set(n))),
        "confession_deploy": fmean(event_prob(model, world.confession_set(n, context="deploy"))),
    })
    return metrics, {"capability": bits, "deploy": _probs(per_context["deploy"])}


def reference_items(sets: dict, base: dict, teacher: dict, taught) -> dict:
    """What the bootstrap needs of an organism: base's and the teacher's items, the families
    capability transfer averages over, and which prompt sets were scored (`sets`, from
    `world_sets` or a Hugging Face organism's `item_sets`: runs whose sets are the same are
    redrawn together)."""
    return {"base": base, "teacher": teacher, "taught": list(taught), "sets": sets}
