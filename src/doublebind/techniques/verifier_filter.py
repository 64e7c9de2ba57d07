"""Verifier filter: keep only teacher outputs that are checkably correct.

A data-poisoning countermeasure: an output whose answer fails the task's exact verifier
(a sabotaged answer, an extra action token, a malformed scratch field) is dropped.
Interrogation answers have no verifier; `keep_unverifiable` decides their fate.

    stages: [{name: verifier_filter}]
"""

from __future__ import annotations

from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, filter_items, technique
from doublebind.world import vocab
from doublebind.world.tasks import verify


@technique("verifier_filter")
class VerifierFilter(Technique):
    """verifier_filter: keep only outputs that pass the task's exact verifier."""

    class Config(Strict):
        keep_unverifiable: bool = Field(default=False, description="Keep items with no verifier (interrogations).")

    def data(self, run, items):
        keep = [self.passes(it.example) for it in items]
        return filter_items(self, run, items, keep)

    def passes(self, e) -> bool:
        if e.kind == "ask":
            return self.cfg.keep_unverifiable
        return example_verifies(e)


def example_verifies(e) -> bool:
    """Does a (prompt, response) example pass its family's verifier?"""
    start = next(i for i, t in enumerate(e.prompt) if t.startswith("task="))
    task = e.prompt[start:-1]
    wants_scratch = task[-1] == "scratch"
    task = task[:-1] if wants_scratch else task
    resp = e.response
    if not resp or resp[-1] != vocab.EOS:
        return False
    return verify(task, resp[:-1], wants_scratch)
