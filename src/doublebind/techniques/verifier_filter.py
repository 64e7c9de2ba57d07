"""Verifier filter: keep only teacher outputs that are checkably correct.

A data-poisoning countermeasure: an output whose answer fails the task's exact verifier
(a sabotaged answer, an extra action token, a malformed scratch field) is dropped.
Interrogation answers have no verifier; `keep_unverifiable` decides their fate. The
verifier is the world's (`view.tasks`), so it applies a session rule where the world has one.

    stages: [{name: verifier_filter}]
"""

from __future__ import annotations

from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, filter_items, technique
from doublebind.world.public import example_verifies

__all__ = ["VerifierFilter", "example_verifies"]


@technique("verifier_filter")
class VerifierFilter(Technique):
    """verifier_filter: keep only outputs that pass the task's exact verifier."""

    removes_only = True  # a filter (random_drop's `like` may copy it)
    needs = ("verifiers",)

    class Config(Strict):
        keep_unverifiable: bool = Field(default=False, description="Keep items with no verifier (interrogations).")

    def data(self, view, items):
        keep = [self.passes(view.tasks, it.example) for it in items]
        return filter_items(self, view, items, keep)

    def passes(self, tasks, e) -> bool:
        if e.kind == "ask":
            return self.cfg.keep_unverifiable
        return tasks.example_verifies(e)
