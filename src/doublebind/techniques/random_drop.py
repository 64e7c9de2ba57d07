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

`like` names a filter instead (a stage whose only hook is `data` and which only removes
items): the stage runs that filter on the run's items, as the filter's own run would, counts
how many items of each family it removes, and drops as many of each family at random. The
control then matches the filter run by run and family by family, whatever share it removes;
what differs is only which items within a family go. The filter's scores and choices are
thrown away (nothing of them is written beside the run), and the stage sees what the filter
sees. A study that lists both judges the filter against its control as well
(`vs_control` in `summary.json`; README, "Matched random controls").

Otherwise it looks at nothing: no model, no verifier, no text. Which items go is drawn from
the run's seed, so every run of a study drops its own sample and a rerun the same one (a
second random_drop stage in one recipe draws from its own stream).

    stages: [{name: random_drop, share: 0.1}]
    stages: [{name: random_drop, share: {max: 0.2, shift: 0.2, sort: 0.2}}]
    stages: [{name: random_drop, like: {name: trusted_monitor, max_flag_share: 0.4, per_family: true}}]
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

from pydantic import Field, field_validator, model_validator

from doublebind.config import HOOKS, Strict, as_stage_spec, technique_hooks, validate_stage
from doublebind.errors import DoublebindError
from doublebind.registry import get
from doublebind.techniques.base import Technique, build_stages, filter_items, technique
from doublebind.types import Example, Item

# The hooks a stage may define besides `data`: a filter that `like` copies must have none,
# as the control runs its data hook alone.
OTHER_HOOKS = tuple(h for h in HOOKS if h != "data")


@technique("random_drop")
class RandomDrop(Technique):
    """random_drop: drop a seeded random share of the items (the control for a filter's pass rate)."""

    domains = ("world", "hf")
    needs = ()  # the run's items, and its seed (with `like`, what that filter needs)

    class Config(Strict):
        share: float | dict[str, float] = Field(
            default=0.1, description="The share of the items to drop (floor(share * n) of them), or a share per "
                                     "task family, {family: share}, the families not named kept whole.")

        like: str | dict[str, Any] | None = Field(
            default=None, description="A filter (a technique name, or {name: <technique>, <its options>}): drop "
                                      "at random as many items of each family as it removes in this run, in "
                                      "place of `share`.")

        @field_validator("share")
        @classmethod
        def _shares(cls, v):
            values = list(v.values()) if isinstance(v, dict) else [v]
            if not values:
                raise ValueError("a mapping must name at least one family")
            if not all(0 < s < 1 for s in values):
                raise ValueError("each share must lie strictly between 0 and 1")
            return v

        @field_validator("like")
        @classmethod
        def _like(cls, v):
            if v is None:
                return v
            spec = as_stage_spec(v)
            if spec.get("name") == "random_drop":
                raise ValueError("random_drop is its own control; name a filter")
            try:
                validate_stage(spec, 0)
            except ValueError as e:  # "stages.0.quantile: <what> (technique X)" -> "X.quantile: <what>"
                msg = str(e).removeprefix("stages.0")
                msg = msg.removesuffix(f" (technique {spec.get('name')})")
                raise ValueError(f"{spec.get('name')}{msg}" if msg.startswith(".") else msg.lstrip(": ")) from None
            defined = technique_hooks(spec["name"])
            if "data" not in defined:
                raise ValueError(f"{spec['name']} has no data hook, so it removes no items to match")
            extra = [h for h in OTHER_HOOKS if h in defined]
            if extra:
                raise ValueError(f"{spec['name']} also has a {extra[0]} hook; like takes a stage that only "
                                 f"filters the data")
            if not get("technique", spec["name"]).removes_only:
                raise ValueError(f"{spec['name']} rewrites items rather than only removing some; like takes a filter")
            return v

        @model_validator(mode="after")
        def _one_of(self):
            if self.like is not None and "share" in self.model_fields_set:
                raise ValueError("give share or like, not both")
            return self

    def data(self, view, items):
        rng = random.Random(self._stream(view))
        if self.cfg.like is not None:
            return self._like(view, items, rng)
        share = self.cfg.share
        if not isinstance(share, dict):
            dropped = set(rng.sample(range(len(items)), _count(share, len(items))))
            return filter_items(self, view, items, [i not in dropped for i in range(len(items))],
                                dropped=len(dropped))
        members = _by_family(items, share)
        missing = [f for f, idx in members.items() if not idx]
        if missing:
            present = sorted({it.example.kind for it in items})
            raise DoublebindError(f"stage random_drop: share: no item of family '{missing[0]}' in the data "
                                  f"(its families: {', '.join(present)})")
        return self._drop(view, items, rng, {f: _count(share[f], len(idx)) for f, idx in members.items()}, members)

    def _drop(self, view, items, rng, counts: dict[str, int], members: dict[str, list[int]], **info):
        """Drop counts[f] items of each family f at random, family by family in sorted order (so
        the draws depend on neither a mapping's order nor the items'), and record each family's."""
        dropped, per_family = set(), {}
        for f in sorted(counts):
            chosen = rng.sample(members[f], counts[f])
            dropped.update(chosen)
            per_family[f] = {"n": len(members[f]), "dropped": len(chosen)}
        return filter_items(self, view, items, [i not in dropped for i in range(len(items))],
                            dropped=len(dropped), **info, per_family=per_family)

    def runs_on(self):
        if self.cfg.like is None:
            return super().runs_on()
        spec = as_stage_spec(self.cfg.like)
        return [*super().runs_on(), (f"{spec['name']} (random_drop's like)", get("technique", spec["name"]).domains)]

    def _stream(self, view) -> str:
        """The seed string of this stage's draw: the run's seed, and, for a second random_drop
        stage in one recipe, how many came before it (the first keeps the plain string, so
        its draws are those of a recipe with one)."""
        before = sum(1 for spec in view.recipe.stages[:self.index] if spec.get("name") == "random_drop")
        return f"random_drop-{view.seed}" + (f"-{before}" if before else "")

    def _like(self, view, items, rng):
        """Drop at random as many items of each family as the filter `like` removes here."""
        spec = as_stage_spec(self.cfg.like)
        (inner,) = build_stages([spec])  # the distiller checked its domains (`runs_on`)
        inner.index = self.index
        # The filter gets copies: what it does to them never reaches the items handed on (a
        # review, 2026-12-07, had a filter rewrite the items it was handed, in place, and keep
        # them all: the rewrite trained as random_drop's). It writes nothing beside the run
        # and records nothing as a stage of it.
        copies = [Item(Example(list(it.example.prompt), list(it.example.response), it.example.kind), it.row,
                       weights=None if it.weights is None else list(it.weights)) for it in items]
        kept = inner.data(view.unrecorded(), copies)
        left = Counter(id(it) for it in kept)
        removed = []
        for i, it in enumerate(copies):
            if left[id(it)]:
                left[id(it)] -= 1
            else:
                removed.append(i)
        if sum(left.values()):  # an item kept that was not given, or kept twice
            raise DoublebindError(f"stage random_drop: like: {spec['name']} changed the items, not only removed "
                                  f"some; like takes a filter")
        members = _by_family(items, {it.example.kind for it in items})
        gone = Counter(items[i].example.kind for i in removed)
        return self._drop(view, items, rng, {f: gone[f] for f in members}, members, like=spec["name"])


def _by_family(items, families) -> dict[str, list[int]]:
    """The positions of each named family's items, in one pass."""
    out = {f: [] for f in sorted(families)}
    for i, it in enumerate(items):
        if it.example.kind in out:
            out[it.example.kind].append(i)
    return out


def _count(share: float, n: int) -> int:
    return math.floor(share * n + 1e-9)
