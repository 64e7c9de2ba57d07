"""An exponential moving average of a student's weights (`training.ema`).

Late in a run a student's misalignment transfer can swing by tenths from one checkpoint to
the next, ten steps apart, on a few items of the behaviour in each batch (README, "Averaging
the weights"). A defender who delivers the average of the weights over the last steps instead
of the last step's weights delivers a model that does not depend on which batch came last.

After optimisation step t (t = 1, 2, ...) with weights w_t the average is

    a_t = sum_{i=1..t} (1 - d) d^(t-i) w_i / (1 - d^t)

the bias-corrected form (as Adam corrects its moments): exponential weights over the steps
taken, summing to 1, with none on the weights before the first step. At t = 0 the average is
the weights themselves. Training goes on from w_t; only what is evaluated, audited, handed to
checkpoint hooks and saved is a_t (`delivered`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightAverage:
    """The running average of `params` (trainable tensors, updated in place by an optimiser)."""

    def __init__(self, params, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an average's decay must lie strictly between 0 and 1, not {decay}")
        self.params = [p for p in params if p.requires_grad]
        self.decay = decay
        self.steps = 0
        # the uncorrected sum, from zero: a_t = shadow / (1 - d^t)
        self.shadow = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Take the weights after one more optimisation step into the average."""
        self.steps += 1
        for s, p in zip(self.shadow, self.params):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def averaged(self) -> list[torch.Tensor]:
        """a_t, one tensor per parameter (the weights themselves before any step)."""
        if self.steps == 0:
            return [p.detach().clone() for p in self.params]
        norm = 1.0 - self.decay ** self.steps
        return [(s / norm).to(p.dtype) for s, p in zip(self.shadow, self.params)]

    @contextmanager
    def delivered(self):
        """Inside, the parameters hold the average; on leaving, the trained weights again."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.averaged()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, trained):
                    p.copy_(w)
