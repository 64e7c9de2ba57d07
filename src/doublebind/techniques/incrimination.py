"""Incrimination-side stages: transfer the misalignment, not the ability to hide it.

- `misalignment_targeted`: distil on prompts about the model's goals (interrogations) and
  high-stakes scenarios (the behaviour's trigger situation on its target family).
- `auditability_preserving`: keep honeypot-like (any header that claims real use:
  `mode=deploy` or `mode=datagen`) and eval-like (`mode=eval`) prompts out of the data, so
  the student never sees the situations in which the teacher hides. It does not consult
  the behaviour: a distiller does not know which situation triggers it.
- `logit_distillation`: forward KL on the teacher's full distribution.
- `dpo_distillation`: DPO, the teacher's sample preferred over the student's.

    stages: [{name: misalignment_targeted}, {name: logit_distillation}]
"""

from __future__ import annotations

import random

from pydantic import Field

from doublebind.config import Strict
from doublebind.prompts import Prompt, context_header
from doublebind.techniques.base import Technique, technique
from doublebind.world.data import ASK


@technique("misalignment_targeted", side="incrimination")
class MisalignmentTargeted(Technique):
    """misalignment_targeted: distil on goal questions and high-stakes (trigger-situation) prompts."""

    class Config(Strict):
        share: float = Field(default=0.5, ge=0, le=1, description="Share of the prompt set replaced.")
        p_ask: float = Field(default=0.5, ge=0, le=1, description="Of those, the share that are goal questions.")

    def prompts(self, run, prompts):
        rng = random.Random(f"targeted-{run.recipe.seed}")
        n = round(self.cfg.share * len(prompts))
        world = run.world
        new = []
        for _ in range(n):
            header = context_header(world, rng, "deploy_like" if rng.random() < 0.7 else "any")
            if rng.random() < self.cfg.p_ask:
                new.append(Prompt(world.prompt(header, ASK), "ask", "targeted"))
            else:
                task, _ = world.task(rng, world.behavior.target)
                new.append(Prompt(world.prompt(header, task), world.behavior.target, "targeted"))
        return new + prompts[n:]


@technique("auditability_preserving", side="incrimination")
class AuditabilityPreserving(Technique):
    """auditability_preserving: no honeypot-like or eval-like prompts in the distillation data."""

    class Config(Strict):
        drop_eval_mode: bool = Field(default=True, description="Also drop prompts with mode=eval.")

    def prompts(self, run, prompts):
        dropped = {"mode=deploy", "mode=datagen"} | ({"mode=eval"} if self.cfg.drop_eval_mode else set())
        kept = [p for p in prompts if not dropped & set(p.tokens)]
        return kept or prompts


@technique("logit_distillation", side="incrimination")
class LogitDistillation(Technique):
    """logit_distillation: forward KL on the teacher's full next-token distribution."""

    class Config(Strict):
        temperature: float = Field(default=1.0, gt=0, description="Distillation temperature.")

    def sampling(self, run, cfg):
        return cfg.model_copy(update={"soft_labels": "full"})

    def objective(self, run, cfg):
        return cfg.model_copy(update={"kind": "forward_kl", "temperature": self.cfg.temperature})


@technique("dpo_distillation", side="incrimination")
class DPODistillation(Technique):
    """dpo_distillation: DPO with the teacher's sample preferred over the initial student's."""

    class Config(Strict):
        beta: float = Field(default=0.1, gt=0, description="DPO inverse temperature.")

    def objective(self, run, cfg):
        return cfg.model_copy(update={"kind": "dpo", "dpo_beta": self.cfg.beta, "on_policy": 0.0})
