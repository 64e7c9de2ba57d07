"""Hard-label supervised fine-tuning with the loss on completions only.

Used to build organisms; the distillation engine reuses the same loss.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch

from doublebind.training.batching import collate, response_logprobs


def sft_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood of response tokens."""
    logp = response_logprobs(model, batch)  # [B, T-1, V]
    targets = batch["input_ids"][:, 1:]
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    mask = batch["loss_mask"]
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def lr_at(step: int, steps: int, peak: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    w = max(1, int(warmup * steps))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_sft(model, sample: Callable[[random.Random], object], cfg, seed: int,
              progress: Callable[[int], None] | None = None, pool_size: int = 20000) -> list[float]:
    """Train `model` in place on examples drawn by `sample(rng)`; returns the loss per step.

    A pool of examples is drawn once (deterministically from `seed`) and batches are drawn
    from it, so data generation does not dominate the step time of tiny models.
    """
    if cfg.steps == 0:
        return []
    rng = random.Random(f"data-{seed}")
    pool = [sample(rng) for _ in range(min(pool_size, cfg.steps * cfg.batch))]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    order = random.Random(f"order-{seed}")
    model.train()
    losses = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        batch = collate([pool[order.randrange(len(pool))] for _ in range(cfg.batch)])
        loss = sft_loss(model, batch)
        if not torch.isfinite(loss):
            from doublebind.errors import DoublebindError

            raise DoublebindError(f"training loss became {loss.item()} at step {step}; lower the learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress:
            progress(1)
    model.eval()
    return losses
