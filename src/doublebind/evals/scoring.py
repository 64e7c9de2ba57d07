"""Teacher-forced scoring: the narrow interface every eval uses.

Greedy decoding yields a target iff every target token is the arg-max given the target
prefix, so one forward pass gives both the probability of a continuation and whether greedy
generation would produce it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from doublebind.training.batching import collate, response_logprobs


@dataclass(frozen=True)
class Scored:
    logprobs: list[float]  # log p of each response token
    argmax: list[bool]  # was each response token the arg-max?

    @property
    def prob(self) -> float:
        return float(torch.tensor(self.logprobs).sum().exp())

    @property
    def greedy(self) -> bool:
        return all(self.argmax)


@torch.no_grad()
def teacher_forced(model, examples, batch_size: int = 512) -> list[Scored]:
    """Score each example's response given its prompt, in batched forward passes."""
    out: list[Scored] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk)
        logp = response_logprobs(model, batch)  # [B, T-1, V]
        targets = batch["input_ids"][:, 1:]
        tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
        is_max = logp.argmax(-1) == targets  # [B, T-1]
        for b, e in enumerate(chunk):
            s = len(e.prompt) - 1
            sl = slice(s, s + len(e.response))
            out.append(Scored(tok_lp[b, sl].tolist(), is_max[b, sl].tolist()))
    return out
