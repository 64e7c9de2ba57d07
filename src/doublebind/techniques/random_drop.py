"""Random drop: remove a seeded random share of the training items, the control for a filter.

A filter changes two things at once: which items the student trains on, and how many. With
fewer items each is seen more often in the recipe's steps, and a behaviour the filter never
saw can transfer more or less for that alone. Dropping as much at random changes the amount
and leaves the mix as it was, in expectation: run it beside a filter, at the share that
filter removes (1 − its pass rate), to tell what the filter's effect owes to what it chose
rather than to how much it took away (README, "A weaker monitor, per task family").

`share` is a share of all items, or, as a mapping, a share of each named task family's items
(the family a prompt is filed under: in the world the task its prompt names, on a Hugging Face
organism its prompt file's `family` label), the other families kept whole: the control for
a filter that removes unevenly across families, such as `trusted_monitor` with `per_family`.
Each draws floor(share * n) items.

It looks at nothing else: no model, no verifier, no text. Which items go is drawn from the
run's seed, so every run of a study drops its own sample and a rerun the same one.

    stages: [{name: random_drop, share: 0.1}]
    stages: [{name: random_drop, share: {max: 0.2, shift: 0.2, sort: 0.2}}]
"""

from __future__ import annotations

import math
import random

from pydantic import Field, field_validator

from doublebind.config import Strict
from doublebind.errors import DoublebindError
from doublebind.techniques.base import Technique, filter_items, technique


@technique("random_drop")
class RandomDrop(Technique):
    """random_drop: drop a seeded random share of the items (the control for a filter's pass rate)."""

    domains = ("world", "hf")
    needs = ()  # the run's items, and its seed

    class Config(Strict):
        share: float | dict[str, float] = Field(
            default=0.1, description="The share of the items to drop (floor(share * n) of them), or a share per "
                                     "task family, {family: share}, the families not named kept whole.")

        @field_validator("share")
        @classmethod
        def _shares(cls, v):
            values = list(v.values()) if isinstance(v, dict) else [v]
            if not values:
                raise ValueError("a mapping must name at least one family")
            if not all(0 < s < 1 for s in values):
                raise ValueError("each share must lie strictly between 0 and 1")
            return v

    def data(self, view, items):
        rng = random.Random(f"random_drop-{view.seed}")
        share = self.cfg.share
        if not isinstance(share, dict):
            dropped = set(rng.sample(range(len(items)), _count(share, len(items))))
            return filter_items(self, view, items, [i not in dropped for i in range(len(items))],
                                dropped=len(dropped))
        members = {f: [i for i, it in enumerate(items) if it.example.kind == f] for f in sorted(share)}
        missing = [f for f, idx in members.items() if not idx]
        if missing:
            present = sorted({it.example.kind for it in items})
            raise DoublebindError(f"stage random_drop: share: no item of family '{missing[0]}' in the data "
                                  f"(its families: {', '.join(present)})")
        dropped, per_family = set(), {}
        for f, idx in members.items():  # in sorted order, so the draws are the same whatever the mapping's order
            chosen = rng.sample(idx, _count(share[f], len(idx)))
            dropped.update(chosen)
            per_family[f] = {"n": len(idx), "dropped": len(chosen)}
        return filter_items(self, view, items, [i not in dropped for i in range(len(items))],
                            dropped=len(dropped), per_family=per_family)


def _count(share: float, n: int) -> int:
    return math.floor(share * n + 1e-9)
