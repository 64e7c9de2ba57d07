"""Random drop: remove a seeded random share of the training items, the control for a filter.

A filter changes two things at once: which items the student trains on, and how many. With
fewer items each is seen more often in the recipe's steps, and a behaviour the filter never
saw can transfer more or less for that alone. Dropping the same share at random changes the
amount and leaves the mix as it was, in expectation: a filter's misalignment measured beside
this control, at the share the filter removed, tells what its effect owes to what it chose
rather than to how much it took away (README, "A weaker monitor, per task family").

It looks at nothing: no model, no verifier, no text. Which items go is drawn from the run's
seed, so every run of a study drops its own sample and a rerun the same one.

    stages: [{name: random_drop, share: 0.1}]
"""

from __future__ import annotations

import math
import random

from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, filter_items, technique


@technique("random_drop")
class RandomDrop(Technique):
    """random_drop: drop a seeded random share of the items (the control for a filter's pass rate)."""

    domains = ("world", "hf")
    needs = ()  # the run's items, and its seed

    class Config(Strict):
        share: float = Field(default=0.1, gt=0, lt=1,
                             description="The share of the items to drop, floor(share * n) of them.")

    def data(self, view, items):
        n = math.floor(self.cfg.share * len(items) + 1e-9)
        dropped = set(random.Random(f"random_drop-{view.seed}").sample(range(len(items)), n))
        return filter_items(self, view, items, [i not in dropped for i in range(len(items))], dropped=n)
