"""The one training loop: every model doublebind trains takes its steps here.

Organism building (`train_sft`), Hugging Face implants (`llm.organism.implant`), probe
students (`iterative_filter`) and distillation (`training.distill.Distiller`) differ only in
how a step's gradient is accumulated; `Loop.step` does the rest, the same way for all:

    set the step's learning rate (linear warm-up, cosine decay to 10%; or constant)
    accumulate()        backward over the step's micro-batches, returns the step's loss
    refuse a non-finite loss with one clear error (checkpoints already written are kept)
    clip the gradient norm, take the optimiser step, zero the gradients

`fit` drives a `Loop` over plain batches of examples with the completion-only NLL.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from doublebind.errors import DoublebindError


def lr_at(step: int, steps: int, peak: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    w = max(1, int(warmup * steps))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _fusable(params) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: one kernel for the whole
    update, instead of a Python loop over the tensors (the single-tensor path PyTorch picks on
    CPU), which costs a few percent of a tiny model's step. Its results differ from the loop's
    by rounding only (about 1e-7 in the weights)."""
    return bool(params) and all(type(p) is torch.nn.Parameter and p.is_floating_point()
                                and p.device.type in ("cpu", "cuda") for p in params)


class Loop:
    """One optimiser and its schedule; `step(i, accumulate)` takes optimisation step i."""

    def __init__(self, params, *, steps: int, lr: float, warmup: float = 0.0, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.98), schedule: str = "cosine", clip: float | None = 1.0,
                 clip_fn: Callable | None = None, what: str = "training loss", hint: str = "lower the learning rate",
                 fused: bool = False):
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay,
                                     **({"fused": True} if fused and _fusable(self.params) else {}))
        self.steps, self.lr, self.warmup, self.schedule = steps, lr, warmup, schedule
        self.clip, self.clip_fn = clip, clip_fn or torch.nn.utils.clip_grad_norm_
        self.what, self.hint = what, hint

    def lr_at(self, step: int) -> float:
        return self.lr if self.schedule == "constant" else lr_at(step, self.steps, self.lr, self.warmup)

    def step(self, step: int, accumulate: Callable[[], float]) -> float:
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step)
        loss = accumulate()
        if not math.isfinite(loss):
            raise DoublebindError(f"{self.what} became {loss} at step {step + 1}; {self.hint}")
        if self.clip is not None:
            self.clip_fn(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def fit(model, next_batch: Callable[[int], dict[str, torch.Tensor]], loop: Loop,
        progress: Callable[[int], None] | None = None) -> list[float]:
    """Train `model` in place for `loop.steps` steps of completion-only NLL on the collated
    batches `next_batch(step)` gives; returns the loss per step."""
    from doublebind.training.batching import model_device, to_device
    from doublebind.training.objectives import sft_nll

    device = model_device(model)

    def accumulate(batch) -> float:
        batch = to_device(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        loss = sft_nll(logits, batch["input_ids"][:, 1:], batch["loss_mask"])
        if torch.isfinite(loss):
            loss.backward()
        return loss.item()

    model.train()
    losses = []
    for step in range(loop.steps):
        batch = next_batch(step)
        losses.append(loop.step(step, lambda: accumulate(batch)))
        if progress:
            progress(1)
    model.eval()
    return losses
