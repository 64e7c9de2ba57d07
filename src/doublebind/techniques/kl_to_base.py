"""KL-to-base regulariser ("liminal" training): stay close to base except where taught.

Adds `weight * KL(student || base)` at every response token to the distillation loss, so
the student moves away from base only as far as the teacher's data forces it, and traits
that the data carries only weakly are damped.

    stages: [{name: kl_to_base, weight: 0.5}]
"""

from __future__ import annotations

import torch
from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, technique


@technique("kl_to_base")
class KLToBase(Technique):
    """kl_to_base: add weight * KL(student || base) on response tokens to the loss."""

    needs = ("base",)

    domains = ("world", "hf")

    class Config(Strict):
        weight: float = Field(default=0.5, ge=0, le=1000, description="Weight of the KL-to-base term.")

    def extra_loss(self, view, model, items, batch, logits, mask):
        base = view.load_model("base")
        with torch.no_grad():
            base_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        log_s = torch.log_softmax(logits.float(), -1)  # [B, S-1, V]
        log_b = torch.log_softmax(base_logits.float(), -1)
        kl = (log_s.exp() * (log_s - log_b)).sum(-1)  # [B, S-1]
        return self.cfg.weight * (kl * mask).sum()
