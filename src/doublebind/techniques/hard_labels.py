"""Hard labels instead of logits: jam the subliminal channel carried by the full distribution.

Soft labels carry the teacher's whole next-token distribution, including what it does
not say; hard labels keep only the sampled tokens. The stage switches the objective to SFT
and stops storing soft labels.

    stages: [{name: hard_labels}]

A study judges it against `logit_distillation` (the same recipe on the teacher's soft
labels), not against `baseline`: the study recipe is already hard-label SFT, so against
`baseline` the stage would change nothing. A study that lists hard_labels must list
logit_distillation too.
"""

from __future__ import annotations

from doublebind.config import Strict
from doublebind.techniques.base import Technique, technique


@technique("hard_labels")
class HardLabels(Technique):
    """hard_labels: train on sampled tokens (SFT), not on the teacher's logits."""

    needs = ("teacher",)

    domains = ("world", "hf")
    reference = "logit_distillation"

    class Config(Strict):
        pass

    def sampling(self, view, cfg):
        return cfg.model_copy(update={"soft_labels": "none"})

    def objective(self, view, cfg):
        return cfg.model_copy(update={"kind": "sft", "on_policy": 0.0})
