"""Organism kinds, registered by name: what differs between the embedded world and
Hugging Face organisms, held in one place instead of `if kind == ...` checks.

    @register("organism", "world")
    class WorldOrganisms: ...      # organisms.domain
    @register("organism", "hf")
    class HFOrganisms: ...         # llm.organism

A kind builds organisms from its config kind, opens built ones as an `OrganismDomain` (the
interface the distiller drives), and describes its cards. `kind_of_card` and
`kind_of_config` find the kind; the card's `kind` field names it (`world` when absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from doublebind.errors import DoublebindError
from doublebind.registry import get, names


class OrganismDomain(Protocol):
    """One built organism as the distiller, the evaluation layer and the defender's view see it."""

    kind: str  # the organism kind's name
    card: dict
    max_new_tokens: int
    eos: Any

    @property
    def teacher(self): ...
    @property
    def teacher_families(self) -> tuple[str, ...]: ...
    def load_model(self, role: str): ...
    def prompts(self, cfg, seed: int) -> list: ...
    def teacher_outputs(self, prompts, scfg, seed: int): ...
    def examples(self, outputs) -> list: ...
    def student(self, scfg, seed: int): ...
    def sample(self, model, examples, max_new_tokens: int, temperature: float, seed: int) -> list: ...
    def soft_labels(self, model, examples, width: int): ...
    def evaluate(self, model, n_prompts: int, role: str = "student") -> dict: ...
    def task_space(self): ...  # the public task language with verifiers, or None
    def auditor(self): ...  # the behaviour-agnostic auditor, or None


class OrganismKind(Protocol):
    """What a kind of organism provides."""

    name: str  # the card's `kind`
    config_kind: str  # the config's `kind`
    verified: bool  # whether a build passes verification checks (else it is only measured)

    def organism_hash(self, cfg) -> str: ...
    def build(self, cfg, out: Path | None, *, use_cache: bool, strict: bool, show_progress: bool) -> dict: ...
    def open(self, organism_dir: Path, card: dict) -> OrganismDomain: ...
    def about(self, card: dict) -> list[tuple[str, str]]: ...  # (field, value) rows describing the organism
    def check_lines(self, card: dict) -> list[str]: ...  # what `organism show` prints under the metrics
    def eval_checkpoint(self, model_dir: Path, organism_dir: Path | None, card: dict | None, n: int,
                        samples: int) -> dict: ...


def kind_of_card(card: dict) -> OrganismKind:
    return get("organism", card.get("kind", "world"))()


def kind_of_config(cfg) -> OrganismKind:
    wanted = getattr(cfg, "kind", "organism")
    for name in names("organism"):
        kind = get("organism", name)()
        if kind.config_kind == wanted:
            return kind
    raise DoublebindError(f"no organism kind builds '{wanted}' configs")
