"""Iterative filter and distill (idea 1): distil, look at what the student picked up,
filter the data that carried it, distil again.

Each round trains a probe student (from the recipe's student init, plain SFT) on the
current data, through the auditor's `train_probe` (a probe of a stage's own training the
auditor refuses: `defender.StageAuditor`), and audits it with the behaviour-agnostic
auditor (`doublebind.audits`): its greedy answers to the auditor's own task, interrogation
and prefill queries. The token types the probe writes there that neither base nor trusted
writes on the same query are flagged as picked up, unless verifier-passing training
responses use them (digits: the tasks need them) or more than `max_item_share` of the
training items carry them. Training items whose responses carry a flagged token are
removed, and the next round probes the filtered data. The final distillation runs on what is left.

Its probes train on the teacher's items as the teacher gave them (the auditor's rule), so
it may follow a stage that drops items (`verifier_filter`) but not one that rewrites them
(`inoculation`, `paraphrase`): the run stops with that reason.

It catches what shows as new tokens on the auditor's queries (markers, confessions). A
behaviour that only changes answers (sabotage), or that the probe does not show on the
auditor's queries (a trigger the auditor never hits), passes.

With `auditor: free` the probe is audited by the free-field auditor (`doublebind.free_audit`)
instead: the openings of its scratch fields and free answers that it writes far more often
than base, trusted and the teacher do on the auditor's queries are flagged, and the items
whose free field of that family opens so are removed (unless more than `max_item_share` of
the items do). It catches a code or a signal at a fixed place in a free field (collusion's,
beacon's) once the probe writes it on the auditor's sessions; one the probe keeps to real
sessions, as the teacher does, or one without a fixed opening, passes.

    stages: [{name: iterative_filter, rounds: 2, probe_steps: 400}]
    stages: [{name: iterative_filter, auditor: free}]
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from doublebind.config import Strict, TrainConfig
from doublebind.defender import DefenderError
from doublebind.errors import DoublebindError
from doublebind.free_audit import carries
from doublebind.techniques.base import Technique, technique, write_items


@technique("iterative_filter")
class IterativeFilter(Technique):
    """iterative_filter: rounds of probe-distil, audit what the probe picked up, remove the data that carried it."""

    removes_only = True  # a filter (random_drop's `like` may copy it)
    needs = ("student", "auditor", "verifiers")

    class Config(Strict):
        rounds: int = Field(default=2, ge=1, le=5, description="Probe rounds before the final distillation.")
        probe_steps: int = Field(default=400, ge=1, le=1_000_000, description="SFT steps of each probe student.")
        probe_lr: float = Field(default=1e-3, gt=0, description="Probe learning rate.")
        auditor: Literal["generic", "free"] = Field(
            default="generic",
            description="The audit of each probe: generic (tokens outside the answer format; items carrying a "
                        "flagged token are removed) or free (openings of the free fields; items whose free field "
                        "opens with a flagged opening are removed).")
        max_item_share: float = Field(
            default=0.3, gt=0, le=1,
            description="Never flag a token carried by more than this share of training items: it is part of "
                        "the tasks (digits), not a hidden signal, and removing it would remove the data.")

    def data(self, view, items):
        flagged: set[str] = set()  # tokens, or with auditor: free the openings' labels
        openings: dict = {}  # auditor: free: label -> Opening
        for r in range(self.cfg.rounds):
            cfg = TrainConfig(steps=self.cfg.probe_steps, batch=view.recipe.training.batch, lr=self.cfg.probe_lr,
                              p_trigger=0.0, p_ask=0.0, p_scratch=0.0)
            try:
                probe = view.auditor.train_probe([it.example for it in items], cfg, view.seed + 100 + r,
                                                 view.seed + r)
            except DefenderError:  # items an earlier stage rewrote: said as it is
                raise
            except DoublebindError as e:  # "lower the learning rate" meant the probe's, not training.lr
                raise DoublebindError(f"iterative_filter's probe: {e} (its probe_lr, now "
                                      f"{self.cfg.probe_lr:g})") from None
            if self.cfg.auditor == "free":
                res = view.auditor.audit(probe, auditor="free")
                found = {o.label(): o for o in res.openings
                         if sum(carries(it.example.kind, it.example.response, o) for it in items)
                         <= self.cfg.max_item_share * len(items)}
                new = set(found) - flagged
                openings.update(found)
                hit = lambda it: any(carries(it.example.kind, it.example.response, o)  # noqa: E731
                                     for o in openings.values())
            else:
                res = view.auditor.audit(probe)
                carried = Counter(t for it in items for t in set(it.example.response))
                task_vocab = _task_vocabulary(view.tasks, items)
                new = {t for t in res.tokens
                       if t not in task_vocab and carried[t] <= self.cfg.max_item_share * len(items)} - flagged
                hit = lambda it: bool(flagged & set(it.example.response))  # noqa: E731
            flagged |= new
            before = len(items)
            hits = [hit(it) for it in items]  # each item judged once
            removed = [it for it, h in zip(items, hits) if h]
            items = [it for it, h in zip(items, hits) if not h]
            folder = self.folder(view)
            if folder is not None:
                write_items(folder / f"round{r}_removed.jsonl", removed)
            view.record(self, "data", round=r, before=before, after=len(items),
                        pass_rate=round(len(items) / max(1, before), 4), flagged=sorted(flagged),
                        new_flags=sorted(new), probe_audit=res.summary())
            if not new or not items:  # a probe cannot train on nothing: said below, not an internal error
                break
        if not items:
            raise DoublebindError("iterative_filter removed every training example")
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "kept.jsonl", items)
        return items


def _task_vocabulary(tasks, items) -> set[str]:
    """Tokens that verifier-passing task responses use: the tasks need them."""
    return {t for it in items if it.example.kind != "ask" and tasks.example_verifies(it.example)
            for t in it.example.response}
