"""Shared data types at the bottom of the package: what flows between the pipeline's stages.

    Prompt   a prompt of a prompt set (tokens, family, context)
    Example  a prompt with a response (training data, eval items)
    Item     a training example as the distiller holds it (soft-label row, weights, ...)

They import nothing from doublebind, so every layer above (world, engine, techniques,
studies) can use them without reaching anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prompt:
    tokens: list  # <bos> header task [scratch] > (world tokens), or token ids (HF organisms)
    family: str  # task family, or "ask" for interrogations
    context: str  # neutral, deploy_like, datagen, any, or "file"


@dataclass(frozen=True)
class Example:
    prompt: list  # <bos> ... >
    response: list  # ... <eos>
    kind: str = ""  # family name or "ask"


@dataclass
class Item:
    """One training example: a prompt, the response to learn from, and its soft-label row."""

    example: Example
    row: int | None = None  # index into the teacher's cached soft labels
    rejected: Example | None = None  # DPO: the response to push away from
    live: Any = None  # on-policy: the live teacher's log-probs, a tensor [T, V]
    weights: list[float] | None = None  # per response token loss weight (1 if None)

    def units(self) -> float:
        return float(len(self.example.response)) if self.weights is None else float(sum(self.weights))
