"""Hard-label supervised fine-tuning with the loss on completions only.

Used to build organisms and to train probe students; the steps are `training.loop`'s.
"""

from __future__ import annotations

import random
from typing import Callable

from doublebind.training.batching import collate
from doublebind.training.loop import Loop, fit, lr_at  # noqa: F401 (lr_at re-exported)


def train_sft(model, sample: Callable[[random.Random], object], cfg, seed: int,
              progress: Callable[[int], None] | None = None, pool_size: int = 20000) -> list[float]:
    """Train `model` in place on examples drawn by `sample(rng)`; returns the loss per step.

    A pool of examples is drawn once (deterministically from `seed`) and batches are drawn
    from it, so data generation does not dominate the step time of tiny models. The steps
    are the package's one training loop (`training.loop`).
    """
    if cfg.steps == 0:
        return []
    rng = random.Random(f"data-{seed}")
    pool = [sample(rng) for _ in range(min(pool_size, cfg.steps * cfg.batch))]
    order = random.Random(f"order-{seed}")
    loop = Loop(model.parameters(), steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, weight_decay=cfg.weight_decay)
    return fit(model, lambda step: collate([pool[order.randrange(len(pool))] for _ in range(cfg.batch)]), loop,
               progress)
