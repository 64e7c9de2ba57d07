"""Trusted monitor: a weaker, trusted model flags the teacher outputs it finds too surprising.

A data-poisoning countermeasure that needs no verifier. The `trusted` model scores each
(prompt, response) teacher-forced; an item's score is the minimum log-prob of its response
tokens (`<eos>` included) under trusted. An item is flagged, and removed, when its score is
below `threshold` (default log(1e-3)): it holds a token the trusted model would essentially
never produce, such as an action marker.

A poor monitor must not delete the dataset: if more than `max_flag_share` of the items would
be flagged, only the lowest-scoring floor(max_flag_share * n) of them are (ties broken by
position); the record says so (`capped: true`). Kept and removed data (with each removed
item's score) are written to the stage folder, and the pass rate is recorded.

A weaker monitor lacks skills the teacher has, and on a skill it is confidently wrong about
every right answer scores as low as a marker: the pooled budget then goes to that skill
first, and the student loses it (`benchmarks/monitor_gap.py`). With `per_family: true` the cap
holds within each task family instead: no family loses more than `max_flag_share` of its
items (floor(max_flag_share * n), so a family of fewer than 1 / max_flag_share items loses
none), and within a family the lowest-scoring go first. The family is the one a prompt is
filed under: in the world the task its prompt names, which the defender reads; on a Hugging
Face organism the prompt file's `family` label, `prompt` for every row unless the file sets
it, and then per family is the pooled cap. The record counts each family's items and flags.

    stages: [{name: trusted_monitor, threshold: -6.9, max_flag_share: 0.5}]
    stages: [{name: trusted_monitor, max_flag_share: 0.2, per_family: true}]
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from pydantic import Field

from doublebind.config import Strict
from doublebind.evals.scoring import teacher_forced
from doublebind.techniques.base import Technique, filter_items, technique
from doublebind.types import Item


@technique("trusted_monitor")
class TrustedMonitor(Technique):
    """trusted_monitor: drop outputs holding a token the trusted model finds too unlikely."""

    removes_only = True  # a filter (random_drop's `like` may copy it)
    needs = ("trusted",)

    domains = ("world", "hf")

    class Config(Strict):
        threshold: float = Field(
            default=math.log(1e-3),
            description="Flag an item when its lowest response-token log-prob under trusted is below this.")
        max_flag_share: float = Field(
            default=0.5, ge=0, le=1,
            description="Most items the monitor may flag, as a share; beyond it only the lowest-scoring are.")
        per_family: bool = Field(
            default=False,
            description="Apply max_flag_share within each task family (the world's task; a Hugging Face prompt "
                        "file's family label) rather than over all items, so a family the monitor cannot judge "
                        "does not take the whole budget; a family loses at most floor(max_flag_share * its size).")

    def data(self, view, items: list[Item]) -> list[Item]:
        scores = monitor_scores(view.load_model("trusted"), [it.example for it in items])
        extra = {}
        if self.cfg.per_family:
            families = [it.example.kind for it in items]
            flagged = flag_per_family(scores, families, self.cfg.threshold, self.cfg.max_flag_share)
            n, k = Counter(families), Counter(f for f, x in zip(families, flagged) if x)
            extra["per_family"] = {f: {"n": n[f], "flagged": k[f]} for f in sorted(n)}
        else:
            flagged = flag(scores, self.cfg.threshold, self.cfg.max_flag_share)
        would = sum(s < self.cfg.threshold for s in scores)
        return filter_items(self, view, items, [not f for f in flagged], scores=[round(s, 4) for s in scores],
                            flagged=sum(flagged), would_flag=would, capped=sum(flagged) < would,
                            threshold=round(self.cfg.threshold, 4), **extra)


def monitor_scores(model, examples) -> list[float]:
    """Each example's lowest response-token log-prob under `model` (0.0 for an empty response)."""
    return [min(s.logprobs, default=0.0) for s in teacher_forced(model, examples)]


def flag(scores: list[float], threshold: float, max_share: float) -> list[bool]:
    """Flag scores below `threshold`; if more than `max_share` would be, only the lowest ones."""
    below = [i for i, s in enumerate(scores) if s < threshold]
    cap = math.floor(max_share * len(scores) + 1e-9)
    if len(below) > cap:
        below = sorted(below, key=lambda i: (scores[i], i))[:cap]
    chosen = set(below)
    return [i in chosen for i in range(len(scores))]


def flag_per_family(scores: list[float], families: list[str], threshold: float, max_share: float) -> list[bool]:
    """`flag` applied within each family apart: each family's cap is `max_share` of its own items."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(families):
        members[f].append(i)
    out = [False] * len(scores)
    for idx in members.values():
        for i, f in zip(idx, flag([scores[i] for i in idx], threshold, max_share)):
            out[i] = f
    return out
