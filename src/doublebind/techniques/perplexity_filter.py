"""Perplexity filter: drop training outputs a trusted reference model finds surprising.

The classic data-poisoning countermeasure of perplexity filtering: a poisoned output (an
injected action token, a sabotaged answer) is text that an aligned model would not write,
so its likelihood under that model is low. Each item is scored by its mean negative
log-likelihood per response token under a reference model (`trusted`, the smaller aligned
model, or `base`), computed in batched teacher-forced passes.

Rule: an item is flagged when its score exceeds the `quantile` of all items' scores, or,
when `max_nll` is given, that absolute threshold instead (the quantile is then ignored).
At most `max_remove` of the items (rounded down) are removed: if more are flagged, only the
highest-scoring ones are removed and the rest are kept.

    stages: [{name: perplexity_filter, reference: trusted, quantile: 0.95, max_remove: 0.2}]
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from doublebind.config import Strict
from doublebind.evals.scoring import teacher_forced
from doublebind.techniques.base import Technique, filter_items, technique


@technique("perplexity_filter")
class PerplexityFilter(Technique):
    """perplexity_filter: drop outputs whose mean token NLL under a reference model is an outlier."""

    removes_only = True  # a filter (random_drop's `like` may copy it)
    needs = ("base", "trusted")

    domains = ("world", "hf")

    class Config(Strict):
        reference: Literal["trusted", "base"] = Field(
            default="trusted", description="Reference model that scores the outputs: trusted or base.")
        quantile: float = Field(
            default=0.95, gt=0, lt=1, description="Remove items scoring above this quantile of all scores.")
        max_nll: float | None = Field(
            default=None, gt=0, description="Absolute threshold on mean NLL (nats/token); replaces `quantile`.")
        max_remove: float = Field(
            default=0.2, ge=0, le=1, description="Most share of the items ever removed (highest scores first).")
        batch_size: int = Field(default=256, ge=1, description="Items per forward pass.")

    def data(self, view, items):
        scores = self.scores(view, items)
        if self.cfg.max_nll is not None:
            threshold = self.cfg.max_nll
        else:
            threshold = float(torch.quantile(torch.tensor(scores, dtype=torch.float64), self.cfg.quantile))
        flagged = [s > threshold for s in scores]
        removed = capped_removals(scores, flagged, self.cfg.max_remove)
        keep = [i not in removed for i in range(len(items))]
        return filter_items(self, view, items, keep, scores=scores, reference=self.cfg.reference,
                            threshold=round(threshold, 4), flagged=sum(flagged), removed=len(removed))

    def scores(self, view, items) -> list[float]:
        """Mean NLL per response token of each item under the reference model."""
        model = view.load_model(self.cfg.reference)
        scored = teacher_forced(model, [it.example for it in items], batch_size=self.cfg.batch_size)
        return [-sum(s.logprobs) / max(1, len(s.logprobs)) for s in scored]


def capped_removals(scores: list[float], flagged: list[bool], max_remove: float) -> set[int]:
    """Indices to remove: the flagged ones, but at most floor(max_remove * n), highest scores first
    (ties by position)."""
    cap = math.floor(max_remove * len(scores) + 1e-9)
    order = sorted((i for i, f in enumerate(flagged) if f), key=lambda i: (-scores[i], i))
    return set(order[:cap])
