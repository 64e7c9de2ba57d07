"""Remember deterministic results per model weights, so that the same checkpoint is never
evaluated or audited twice in one process.

A study evaluates many models that are byte-for-byte the same: every run whose student starts
from `base` evaluates and audits base again at step 0 (the reference metrics already did),
and `distill_and_audit` audits each checkpoint that the run's row then audits again. The
embedded world's evals and audits are deterministic functions of the weights, so
`WeightsMemo` keys them by `weights_key(model)` (a sha256 of the class, the config and
every tensor of the state dict, and train/eval mode) and hands back a deep copy. Results are
identical with or without it; only the work is gone. World models only: hashing the weights
of a large model costs more than it saves.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from typing import Any, Callable, Hashable


def weights_key(model) -> str:
    """A content hash of what a forward pass depends on: class, config, mode, every tensor."""
    import torch

    h = hashlib.sha256(type(model).__qualname__.encode())
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    h.update(b"train" if model.training else b"eval")
    with torch.no_grad():
        _update(h, model.state_dict().items())
    return h.hexdigest()


def tensors_key(tensors: dict) -> str:
    """A content hash of named tensors alone, in name order (no class, config or mode)."""
    h = hashlib.sha256()
    _update(h, sorted(tensors.items(), key=lambda kv: kv[0]))
    return h.hexdigest()


def _update(h, named) -> None:
    import torch

    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


class WeightsMemo:
    """A small LRU of `compute()` results keyed by (weights_key(model), *extra)."""

    def __init__(self, size: int = 16):
        self.size = size
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, model, extra: tuple, compute: Callable[[], Any]) -> Any:
        key = (weights_key(model), *extra)
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
            self.entries[key] = compute()
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return copy.deepcopy(self.entries[key])
