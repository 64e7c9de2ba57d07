"""Divergence masking: no loss on the tokens where the teacher departs from a reference model.

What a misaligned teacher adds beyond its capabilities shows up as tokens it is sure of and
a reference model (`base`, or the weaker `trusted`) would not write: an action marker, a
fingerprint digit. Such tokens are masked out of the distillation loss; the rest of the
response is learnt as usual.

The rule, per response token y_j (the `<eos>` included), both models teacher-forced on the
same prompt + response:

    divergent  iff  y_j == argmax p_teacher(. | prefix)
               and  y_j != argmax p_ref(. | prefix)
               and  log p_teacher(y_j | prefix) - log p_ref(y_j | prefix) > threshold

A divergent token gets weight 0.0, every other token 1.0 (`Item.weights`, one float per
response token; weights set by an earlier stage are multiplied). Items are kept, not
filtered, unless every weight is 0. The stage records the masked-token share and writes
each item's mask to `masks.jsonl` in its folder.

The default threshold is 5 nats: with `base` as reference, the taught skill itself diverges
(base cannot do it; its answers differ by about 2-3 nats on the quick organism) and a
2-nat threshold masks most of it, while an action marker differs by about 10 nats. That
default was set by looking at the marker's divergence, which a defender does not know: it
is a choice with the behaviour in view, not one the stage could make from its own data, and
a verdict at the default is one at a threshold placed between the two by knowing both
(`threshold` moves it; `benchmarks/knob_effects.py` measures what it does).

    stages: [{name: divergence_masking, reference: base, threshold: 5.0}]
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from doublebind.config import Strict
from doublebind.errors import DoublebindError
from doublebind.evals.scoring import teacher_forced
from doublebind.techniques.base import Technique, technique, write_items
from doublebind.types import Item


@technique("divergence_masking")
class DivergenceMasking(Technique):
    """divergence_masking: zero the loss on tokens the teacher is sure of and the reference is not."""

    domains = ("world", "hf")
    needs = ("teacher", "base", "trusted")

    class Config(Strict):
        reference: Literal["base", "trusted"] = Field(
            default="base", description="The model the teacher is compared with: base or trusted.")
        threshold: float = Field(
            default=5.0, description="Nats by which log p_teacher(token) must exceed log p_ref(token) "
                                     "(with the token the teacher's arg-max, not the reference's) to mask it.")

    def data(self, view, items: list[Item]) -> list[Item]:
        examples = [it.example for it in items]
        masks = divergence_masks(view.teacher.score(examples), teacher_forced(view.load_model(self.cfg.reference), examples),
                                 self.cfg.threshold)
        out, notes, masked, total, dropped = [], {}, 0, 0, 0
        for n, (it, mask) in enumerate(zip(items, masks)):
            old = it.weights if it.weights is not None else [1.0] * len(mask)
            weights = [w * m for w, m in zip(old, mask)]
            masked += sum(m == 0.0 for m in mask)
            total += len(mask)
            notes[n] = {"weights": weights, "masked": int(sum(m == 0.0 for m in mask))}
            if weights and not any(weights):
                dropped += 1
                notes[n]["dropped"] = True
                continue
            out.append(replace(it, weights=weights))
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "masks.jsonl", items, notes)
        view.record(self, "data", before=len(items), after=len(out), masked_tokens=masked, tokens=total,
                   masked_share=round(masked / max(1, total), 4),
                   masked_items=sum(1 for v in notes.values() if v["masked"]), dropped=dropped,
                   reference=self.cfg.reference, threshold=self.cfg.threshold)
        if not out:
            raise DoublebindError("stage divergence_masking masked every token of every training example")
        return out


def divergence_masks(t_scores, r_scores, threshold: float) -> list[list[float]]:
    """Per example, 0.0 on the response tokens that meet the divergence rule, 1.0 elsewhere,
    from the teacher's and the reference's teacher-forced scores of the same examples."""
    out = []
    for t, r in zip(t_scores, r_scores):
        out.append([0.0 if (t_max and not r_max and lt - lr > threshold) else 1.0
                    for lt, t_max, lr, r_max in zip(t.logprobs, t.argmax, r.logprobs, r.argmax)])
    return out
