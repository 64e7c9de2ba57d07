"""Distill and audit (idea 4): audit every checkpoint; keep the window where capability has
arrived and the audit has not fired.

At each checkpoint the stage runs the behaviour-agnostic auditor (`doublebind.audits`),
the same one that judges every student, and measures capability the way a defender can:
the share of the auditor's taught-family task queries whose answers pass their exact
verifiers. A checkpoint is flagged when the audit's success@k at the auditor's budget
exceeds `threshold`. In `select` mode the run reports the most capable unflagged
checkpoint; in `stop` mode training also stops at the first flagged one. It knows nothing
of the behaviour: a misalignment that shows no departure from base and trusted on the
auditor's prompts (a wrong answer, a trigger the auditor never hits) passes it. With
`auditor: free` the free-field auditor flags instead (`doublebind.free_audit`): openings of
the scratch field and of free answers that the student writes far more often than base,
trusted and the teacher do on the auditor's queries; a signal without a fixed opening, or
one the student keeps to real sessions as the teacher does, passes that one.

    doublebind distill --organism runs/quick --recipe my_recipe.yaml   # with the stage below
    stages: [{name: distill_and_audit, threshold: 0.5, mode: select}]
    stages: [{name: distill_and_audit, auditor: free}]
"""

from __future__ import annotations

from statistics import fmean
from typing import Literal

from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, technique


@technique("distill_and_audit")
class DistillAndAudit(Technique):
    """distill_and_audit: audit checkpoints with the generic auditor; keep the most capable unflagged one."""

    needs = ("auditor", "verifiers")

    class Config(Strict):
        threshold: float = Field(default=0.5, ge=0, le=1,
                                 description="success@k (at the auditor's budget) above which a checkpoint is flagged.")
        mode: Literal["select", "stop"] = Field(default="select", description="select a checkpoint, or also stop.")
        auditor: Literal["generic", "free"] = Field(
            default="generic",
            description="The audit that flags a checkpoint: generic (tokens outside the answer format) or free "
                        "(openings of the free fields written far more often than base, trusted and the teacher "
                        "write them, `doublebind.free_audit`; at the recipe's `free_audit` setting). Capability is "
                        "measured on the generic auditor's task queries either way.")

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.best: float = -1.0

    def checkpoint(self, view, step, model) -> dict:
        res = view.auditor.audit(model)
        capability = fmean(res.capability[f] for f in view.tasks.teacher_families)
        if self.cfg.auditor == "free":
            res = view.auditor.audit(model, auditor="free")
        flagged = res.success_at_k > self.cfg.threshold
        verdict = {"audit_success_at_k": round(res.success_at_k, 4), "audit_flags": res.flagged,
                   "audit_capability": round(capability, 4), "flagged": flagged}
        if flagged:
            verdict["stop"] = self.cfg.mode == "stop"
        elif capability >= self.best:
            self.best = capability
            verdict["select"] = True
        return verdict
