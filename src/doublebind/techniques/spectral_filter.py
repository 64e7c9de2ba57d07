"""Spectral filter: drop outputs whose activations are outliers along the top singular direction.

Spectral signatures (Tran, Li & Madry 2018): within one class, poisoned examples leave a
trace in the learned representation that shows up along the top singular vector of the
centred representations, so the squared projection on that vector separates them.
The teacher's own activations are not available: a defender sees the teacher as a black
box, so the representation comes from one of the defender's models.

Representation of an item: the last-layer hidden state (`output_hidden_states=True`) of
`base` (default) or `trusted`, averaged over the positions that *produce* the response:
the hidden state at position t predicts token t+1, so these are the positions where
collate's `loss_mask` (aligned with input_ids[:, 1:]) is 1 -- from the prompt's final `>`
(which decides the first response token) to the token before the last response token.
Items are grouped by family (`kind`); each group's representations are centred, the top
right singular vector v is taken (torch.linalg.svd), and score = ((r - mean) . v)^2.

Rule: Tran et al. remove 1.5 x the expected poisoned share of top scorers; that share is
unknown here, so instead an item is flagged when its score's robust z-score within its
group, (score - median) / (1.4826 * MAD), exceeds `sigma` (with MAD = 0, any score above
the median counts as infinitely far). Groups with fewer than `min_group` (10) items are not
scored and never removed. At most `max_remove` of all items (rounded down) are removed,
the highest z-scores first. Note the method assumes poison is a minority of its group:
when half a group is poisoned, both clusters sit equally far from the centre and nothing
stands out. `scores.jsonl` in the stage folder lists every item's group, score and z.

    stages: [{name: spectral_filter, model: base, sigma: 3.0, max_remove: 0.2}]
"""

from __future__ import annotations

import json
import math
from typing import Literal

import torch
from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, filter_items, technique
from doublebind.techniques.perplexity_filter import capped_removals
from doublebind.training.batching import collate, model_device, to_device


@technique("spectral_filter")
class SpectralFilter(Technique):
    """spectral_filter: drop activation outliers along each family's top singular direction (Tran et al.)."""

    removes_only = True  # a filter (random_drop's `like` may copy it)
    domains = ("world", "hf")
    needs = ("base", "trusted")

    class Config(Strict):
        model: Literal["base", "trusted"] = Field(
            default="base", description="The defender's model whose last-layer hidden states represent the items.")
        sigma: float = Field(
            default=3.0, gt=0,
            description="Remove items whose robust z-score (median/MAD) within their family exceeds this.")
        max_remove: float = Field(
            default=0.2, ge=0, le=1, description="Most share of the items ever removed (highest z-scores first).")
        min_group: int = Field(default=10, ge=2, description="Families with fewer items are not scored.")
        batch_size: int = Field(default=256, ge=1, description="Items per forward pass.")

    def data(self, view, items):
        scores, z = self.scores(view, items)
        flagged = [zi is not None and zi > self.cfg.sigma for zi in z]
        rank = [zi if zi is not None else -math.inf for zi in z]
        removed = capped_removals(rank, flagged, self.cfg.max_remove)
        keep = [i not in removed for i in range(len(items))]
        folder = self.folder(view)
        if folder is not None:
            with open(folder / "scores.jsonl", "w") as f:
                for it, s, zi, k in zip(items, scores, z, keep):
                    f.write(json.dumps({"family": it.example.kind, "score": s, "z": _finite(zi), "kept": k}) + "\n")
        return filter_items(self, view, items, keep, scores=[s if s is not None else 0.0 for s in scores],
                            model=self.cfg.model, flagged=sum(flagged), removed=len(removed),
                            groups_skipped=sorted({it.example.kind for it, s in zip(items, scores) if s is None}))

    def representations(self, view, items) -> torch.Tensor:
        """Mean last-layer hidden state over each item's response-producing positions: [N, H]."""
        model = view.load_model(self.cfg.model)
        out = []
        with torch.no_grad():
            for i in range(0, len(items), self.cfg.batch_size):
                batch = to_device(collate([it.example for it in items[i : i + self.cfg.batch_size]]),
                                  model_device(model))
                h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=True).hidden_states[-1][:, :-1].float()  # [B, S-1, H]
                m = batch["loss_mask"].unsqueeze(-1)  # [B, S-1, 1]: position t predicts response token t+1
                out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
        return torch.cat(out) if out else torch.zeros((0, 0))

    def scores(self, view, items) -> tuple[list[float | None], list[float | None]]:
        """Per item: squared projection on its family's top singular vector, and its robust z-score
        in the family (None for families under `min_group` items)."""
        reps = self.representations(view, items)
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.example.kind, []).append(i)
        scores: list[float | None] = [None] * len(items)
        z: list[float | None] = [None] * len(items)
        for idx in groups.values():
            if len(idx) < self.cfg.min_group:
                continue
            s = spectral_scores(reps[idx])
            for i, si, zi in zip(idx, s.tolist(), robust_z(s).tolist()):
                scores[i], z[i] = si, zi
        return scores, z


def spectral_scores(reps: torch.Tensor) -> torch.Tensor:
    """Squared projection of the centred rows on the top right singular vector: [n]."""
    centred = reps.double() - reps.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]) ** 2


def robust_z(s: torch.Tensor) -> torch.Tensor:
    """(s - median) / (1.4826 * MAD); with MAD = 0, +inf above the median and 0 elsewhere."""
    med = torch.quantile(s, 0.5)
    mad = torch.quantile((s - med).abs(), 0.5) * 1.4826
    if mad <= 0:
        return torch.where(s > med, torch.full_like(s, math.inf), torch.zeros_like(s))
    return (s - med) / mad


def _finite(x: float | None) -> float | str | None:
    return "inf" if x is not None and math.isinf(x) else x
