"""Domain concentration: distil only on prompts from the capability domain.

Keeps deployment-like and alignment-relevant contexts (trigger situations, data generation,
interrogations) out of the distillation data: the prompt set is redrawn with the same size
from the taught families in neutral contexts.

    stages: [{name: domain_concentration}]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, technique


@technique("domain_concentration")
class DomainConcentration(Technique):
    """domain_concentration: distil only on capability-domain prompts (taught families, neutral contexts)."""

    needs = ("prompts",)

    class Config(Strict):
        families: Literal["taught", "all"] | list[str] = Field(
            default="taught", description="The capability domain: taught families, all, or a list.")

    def prompts(self, view, prompts):
        cfg = view.recipe.prompts.model_copy(update={
            "families": self.cfg.families, "contexts": {"neutral": 1.0}, "p_ask": 0.0, "slack_only": False,
            "jsonl": None, "size": len(prompts)})
        return view.build_prompts(cfg, view.recipe.seed)
