"""ONION filter: delete the response tokens whose removal makes the output far more plausible.

ONION (Qi et al. 2021) defends against backdoor triggers by leave-one-out perplexity: a
token injected into fluent text raises its perplexity, so deleting it lowers perplexity a
lot. Here the injected token is in the teacher's *output* (an action token like `!exfil`),
and the fluency judge is a reference model (`trusted`, the smaller aligned model, or
`base`). For each response token except `<eos>`:

    suspicion = mean NLL of the full response - mean NLL of the response without that token

(per response token, given the prompt). All leave-one-out variants are built as examples and
scored with batched teacher-forced passes. Tokens with suspicion > `threshold` nats are
deleted from the response: the item is rewritten, not dropped.

Rules, applied greedily from the most suspicious token over all items down:
- a response that passed the task's verifier (`view.tasks.example_verifies`) keeps
  passing: a deletion that would make it fail is skipped (interrogations have no verifier);
- a response never loses its last token;
- at most `max_remove` of all non-`<eos>` response tokens (rounded down) are deleted.

A rewritten response no longer lines up with the teacher's cached soft labels, so this stage
switches the objective to `sft` (on-policy off) and sampling to `soft_labels: none`, as
`hard_labels` does. `rewritten.jsonl` in the stage folder lists each rewritten item with
its original response and the deleted tokens; `kept.jsonl` is the resulting data.

    stages: [{name: onion_filter, reference: trusted, threshold: 1.0, max_remove: 0.2}]

On a Hugging Face organism the same rule runs on token ids (the end-of-sequence token is
the tokenizer's, `view.eos`). There is no verifier, so the verifier guard does not apply;
a deleted token is a subword, so a deletion may leave a word cut in two.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from doublebind.config import Strict
from doublebind.evals.scoring import teacher_forced
from doublebind.techniques.base import Technique, _joined, filter_items, needs_hard_labels, technique, write_items
from doublebind.types import Item
from doublebind.world import vocab
from doublebind.types import Example


@technique("onion_filter")
class OnionFilter(Technique):
    """onion_filter: delete response tokens whose removal lowers reference NLL the most (ONION, Qi et al.)."""

    domains = ("world", "hf")
    needs = ("base", "trusted", "verifiers")

    class Config(Strict):
        reference: Literal["trusted", "base"] = Field(
            default="trusted", description="Reference model that judges fluency: trusted or base.")
        threshold: float = Field(
            default=1.0, description="Delete tokens whose removal lowers the mean response NLL by more nats.")
        max_remove: float = Field(
            default=0.2, ge=0, le=1, description="Most share of all non-eos response tokens ever deleted.")
        batch_size: int = Field(default=512, ge=1, description="Examples per forward pass.")

    def sampling(self, view, cfg):
        return cfg.model_copy(update={"soft_labels": "none"})

    def objective(self, view, cfg):
        return cfg.model_copy(update={"kind": "sft", "on_policy": 0.0})

    def suspicion(self, view, items) -> list[dict[int, float]]:
        """Per item: {response position: full mean NLL - mean NLL without that token}."""
        eos = _eos(view)
        variants, where = [], []
        for i, it in enumerate(items):
            e = it.example
            if len(e.response) < 2:
                continue
            for j, tok in enumerate(e.response):
                if tok != eos:
                    variants.append(Example(e.prompt, e.response[:j] + e.response[j + 1 :], e.kind))
                    where.append((i, j))
        model = view.load_model(self.cfg.reference)
        scored = teacher_forced(model, [it.example for it in items] + variants, batch_size=self.cfg.batch_size)
        full = [_mean_nll(s.logprobs) for s in scored[: len(items)]]
        out: list[dict[int, float]] = [{} for _ in items]
        for (i, j), s in zip(where, scored[len(items) :]):
            out[i][j] = full[i] - _mean_nll(s.logprobs)
        return out

    def data(self, view, items):
        needs_hard_labels(self, view, "deletes response tokens", "put onion_filter after the stage that sets it")
        sus = self.suspicion(view, items)
        eos = _eos(view)
        n_tokens = sum(1 for it in items for t in it.example.response if t != eos)
        cap = math.floor(self.cfg.max_remove * n_tokens + 1e-9)
        verifiable = view.kind == "world"  # Hugging Face organisms have no verifiers
        passed = [verifiable and it.example.kind != "ask" and view.tasks.example_verifies(it.example) for it in items]
        cands = sorted(((s, i, j) for i, d in enumerate(sus) for j, s in d.items() if s > self.cfg.threshold),
                       key=lambda c: (-c[0], c[1], c[2]))
        drop: list[set[int]] = [set() for _ in items]
        skipped_verifier = removed = 0
        for s, i, j in cands:
            if removed >= cap:
                break
            e = items[i].example
            trial = drop[i] | {j}
            if len(trial) >= sum(t != eos for t in e.response):  # its last token (`<eos>` is never deleted)
                continue
            if passed[i] and not view.tasks.example_verifies(_without(e, trial)):
                skipped_verifier += 1
                continue
            drop[i] = trial
            removed += 1
        out, notes = [], {}
        for i, it in enumerate(items):
            if not drop[i]:
                out.append(it)
                continue
            e = it.example
            w = None if it.weights is None else [x for j, x in enumerate(it.weights) if j not in drop[i]]
            out.append(Item(_without(e, drop[i]), None, weights=w))
            notes[len(notes)] = {"original": _joined(e.response),
                                 "removed": [e.response[j] for j in sorted(drop[i])],
                                 "positions": sorted(drop[i]),
                                 "suspicion": [round(sus[i][j], 4) for j in sorted(drop[i])]}
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "rewritten.jsonl", [o for o, d in zip(out, drop) if d], notes)
        top = [max(d.values(), default=0.0) for d in sus]
        return filter_items(self, view, out, [True] * len(out), scores=top, reference=self.cfg.reference,
                            tokens_removed=removed, items_rewritten=sum(1 for d in drop if d),
                            flagged_tokens=len(cands), skipped_for_verifier=skipped_verifier, token_cap=cap)


def _eos(view):
    """The end-of-sequence token of the run's examples (a world token or a tokenizer id)."""
    return vocab.EOS if view.eos is None else view.eos


def _mean_nll(logprobs: list[float]) -> float:
    return -sum(logprobs) / max(1, len(logprobs))


def _without(e: Example, positions: set[int]) -> Example:
    return Example(e.prompt, [t for j, t in enumerate(e.response) if j not in positions], e.kind)
