"""Domain concentration: distil only on prompts from the capability domain.

Keeps deployment-like and alignment-relevant contexts (trigger situations, data generation,
interrogations) out of the distillation data: the prompt set is redrawn with the same size
from the taught families in neutral contexts.

On a Hugging Face organism there are no task families or context headers to draw from;
the stage reads the prompt set's own labels instead (a prompts JSONL row may carry `family`
and `context`, the defender's annotations; see `HFDomain.prompts`). It keeps the prompts
whose context is `neutral` or unlabelled (`file`) and whose family is not `ask` (and is in
`families` when that is a list; `taught` and `all` keep every family, since an HF organism
has no taught families a defender knows), then refills the set up to its size with distinct
prompts of the distillation distribution that pass the same rule, as far as it has them.
A prompt set with no prompt in the domain is refused.

    stages: [{name: domain_concentration}]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from doublebind.config import Strict
from doublebind.errors import DoublebindError
from doublebind.techniques.base import Technique, technique

HF_NEUTRAL = ("neutral", "file")  # unlabelled prompts count as neutral


@technique("domain_concentration")
class DomainConcentration(Technique):
    """domain_concentration: distil only on capability-domain prompts (taught families, neutral contexts)."""

    domains = ("world", "hf")
    needs = ("prompts",)

    class Config(Strict):
        families: Literal["taught", "all"] | list[str] = Field(
            default="taught", description="The capability domain: taught families, all, or a list.")

        @field_validator("families")
        @classmethod
        def _some(cls, v):
            if isinstance(v, list) and (not v or not all(isinstance(f, str) and f.strip() for f in v)):
                raise ValueError("a list must name at least one family (or use taught or all)")
            return v

    def prompts(self, view, prompts):
        if view.kind != "world":
            return self._filter(view, prompts)
        if isinstance(self.cfg.families, list):  # world families are the task language's; HF labels are free
            from doublebind.registry import names

            unknown = [f for f in self.cfg.families if f not in names("family")]
            if unknown:
                raise DoublebindError(f"stage domain_concentration: families: unknown family '{unknown[0]}' "
                                      f"(known: {', '.join(names('family'))})")
        cfg = view.recipe.prompts.model_copy(update={
            "families": self.cfg.families, "contexts": {"neutral": 1.0}, "p_ask": 0.0, "slack_only": False,
            "jsonl": None, "size": len(prompts)})
        return view.build_prompts(cfg, view.recipe.seed)

    def _filter(self, view, prompts):
        """Hugging Face organisms: keep the labelled capability domain, refill from the distribution."""
        def in_domain(p) -> bool:
            return (p.context in HF_NEUTRAL and p.family != "ask"
                    and (isinstance(self.cfg.families, str) or p.family in self.cfg.families))

        kept = [p for p in prompts if in_domain(p)]
        seen = {tuple(p.tokens) for p in kept}
        refilled = 0
        if len(kept) < len(prompts):
            for p in view.draw_prompts(2 * len(prompts), view.seed + 11, keep=in_domain):
                if len(kept) >= len(prompts):
                    break
                if tuple(p.tokens) not in seen:
                    seen.add(tuple(p.tokens))
                    kept.append(p)
                    refilled += 1
        if not kept:
            listed = (f", family one of {', '.join(self.cfg.families)} (the stage's families)"
                      if isinstance(self.cfg.families, list) else "")
            raise DoublebindError("domain_concentration: no prompt of the distribution is in the capability domain "
                                  f"(context neutral or unlabelled, family not ask{listed})")
        view.record(self, "prompts", removed=sum(not in_domain(p) for p in prompts), refilled=refilled)
        return kept
