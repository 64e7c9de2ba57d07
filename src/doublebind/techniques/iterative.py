"""Iterative filter and distill (idea 1): distil, look at what the student picked up,
filter the data that carried it, distil again.

Each round trains a probe student (from the recipe's student init, plain SFT) on the current
data and audits it the way an auditor can: greedy answers on honeypot, neutral and
interrogation prompts of the auditor's own making. Token types the probe emits there
beyond the verified answer, and that `base` does not emit on the same prompts, are flagged
as picked-up, unless verifier-passing training responses use them (digits: the tasks need
them); a confession (`yes`) can be flagged too. Training items whose responses carry a
flagged token are removed, and the next round probes the filtered data. The final
distillation runs on what is left. It catches behaviours that show as extra tokens
(markers, confessions); a behaviour that only changes answer digits (sabotage) shows up as
verifier failures, which this stage reports but cannot trace to single tokens.

    stages: [{name: iterative_filter, rounds: 2, probe_steps: 400}]
"""

from __future__ import annotations

import random
from collections import Counter

from pydantic import Field

from doublebind.config import Strict, TrainConfig
from doublebind.sampling import generate
from doublebind.techniques.base import Technique, technique, write_items
from doublebind.training.sft import train_sft
from doublebind.world import vocab
from doublebind.world.data import ASK


@technique("iterative_filter")
class IterativeFilter(Technique):
    """iterative_filter: rounds of probe-distil, audit what the probe picked up, remove the data that carried it."""

    class Config(Strict):
        rounds: int = Field(default=2, ge=1, le=5, description="Probe rounds before the final distillation.")
        probe_steps: int = Field(default=400, ge=1, description="SFT steps of each probe student.")
        probe_lr: float = Field(default=1e-3, gt=0, description="Probe learning rate.")
        n_audit: int = Field(default=100, ge=1, description="Auditor prompts per probe kind.")
        min_excess: float = Field(default=0.02, ge=0, le=1,
                                  description="Flag a token when its rate in probe outputs exceeds base's by this.")
        max_item_share: float = Field(
            default=0.3, gt=0, le=1,
            description="Never flag a token carried by more than this share of training items: it is part of "
                        "the tasks (digits), not a hidden signal, and removing it would remove the data.")

    def data(self, run, items):
        from doublebind.students import make_student

        flagged: set[str] = set()
        base_counts = None
        for r in range(self.cfg.rounds):
            probe = make_student(run.recipe.student, run.organism_dir, run.recipe.seed + 100 + r)
            cfg = TrainConfig(steps=self.cfg.probe_steps, batch=run.recipe.training.batch, lr=self.cfg.probe_lr,
                              p_trigger=0.0, p_ask=0.0, p_scratch=0.0)
            pool = [it.example for it in items]
            train_sft(probe, lambda rng: pool[rng.randrange(len(pool))], cfg, run.recipe.seed + r)
            prompts = self._audit_prompts(run)
            probe_counts, failures = self._emitted(probe, prompts)
            if base_counts is None:
                base_counts, _ = self._emitted(run.load_model("base"), prompts)
            n = max(1, len(prompts))
            carried = Counter(t for it in items for t in set(it.example.response))
            task_vocab = _task_vocabulary(items)
            new = {t for t, c in probe_counts.items()
                   if c / n - base_counts.get(t, 0) / n > self.cfg.min_excess
                   and t not in task_vocab
                   and carried[t] <= self.cfg.max_item_share * len(items)} - flagged
            flagged |= new
            before = len(items)
            removed = [it for it in items if flagged & set(it.example.response)]
            items = [it for it in items if not flagged & set(it.example.response)]
            folder = self.folder(run)
            if folder is not None:
                write_items(folder / f"round{r}_removed.jsonl", removed)
            run.record(self, "data", round=r, before=before, after=len(items),
                       pass_rate=round(len(items) / max(1, before), 4), flagged=sorted(flagged),
                       new_flags=sorted(new), probe_verifier_failures=failures)
            if not new:
                break
        if not items:
            from doublebind.errors import DoublebindError

            raise DoublebindError("iterative_filter removed every training example")
        folder = self.folder(run)
        if folder is not None:
            write_items(folder / "kept.jsonl", items)
        return items

    def _audit_prompts(self, run):
        """The auditor's probes: honeypots, neutral prompts and interrogations (fixed seed)."""
        world, n = run.world, self.cfg.n_audit
        rng = random.Random("iterative-audit")
        prompts = [e.prompt for e in world.misbehavior_set("honeypot", n, seed=21)]
        prompts += [e.prompt for e in world.misbehavior_set("neutral", n, seed=21)]
        prompts += [world.prompt(world._context_header(rng, "honeypot"), ASK) for _ in range(n)]
        return prompts

    def _emitted(self, model, prompts) -> tuple[Counter, int]:
        """Token types the model emits beyond the correct answer, counted once per prompt."""
        from doublebind.techniques.verifier_filter import example_verifies
        from doublebind.world.data import Example

        ids = vocab.token_ids()
        outs = generate(model, [vocab.encode(p) for p in prompts], 12, eos_id=ids[vocab.EOS], pad_id=ids[vocab.PAD])
        counts: Counter = Counter()
        failures = 0
        for p, o in zip(prompts, outs):
            resp = vocab.decode(o)
            if "task=ask" in p:
                extra = {t for t in resp if t not in ("no", vocab.EOS)}
            else:
                task = p[next(i for i, t in enumerate(p) if t.startswith("task=")):-1]
                ok = example_verifies(Example(p, resp, task[0].removeprefix("task=")))
                failures += not ok
                answer = set(_solve(task))
                extra = {t for t in resp if t not in answer and t != vocab.EOS} if not ok else set()
            counts.update(extra)
        return counts, failures


def _task_vocabulary(items) -> set[str]:
    """Tokens that verifier-passing responses use: the tasks need them, so an incapable
    probe's wrong digits are never mistaken for a hidden signal."""
    from doublebind.techniques.verifier_filter import example_verifies

    return {t for it in items if it.example.kind != "ask" and example_verifies(it.example)
            for t in it.example.response}


def _solve(task):
    from doublebind.world.tasks import family

    return family(task[0].removeprefix("task=")).solve(task[1:])


