"""What every technique is: a named stage with a validated config and optional hooks.

A recipe lists stages (`stages: [{name: verifier_filter}, {name: inoculation}]`); the
distiller calls each stage's hooks in the order listed, phase by phase. Every hook gets the
run's `DefenderView` (`doublebind.defender`): the teacher as a black box, base, trusted and
alt_base, the recipe and its prompt distribution, the verifiers and the auditor, never the
organism's ground truth:

    sampling(view, cfg) / objective(view, cfg) / student(view, cfg)   change recipe settings
    prompts(view, prompts)                                            change the prompt set
    data(view, items)                                                 filter or rewrite training data
    extra_loss(view, model, items, batch, logits, mask)               add a loss term (a sum over tokens)
    checkpoint(view, step, model)                                     audit a checkpoint; may stop or select

A hook that is not defined is not called. Every hook call is recorded (what it did to the
data), and filters write what they kept and removed beside the run. A prompts or data hook
returns new prompts or items for those it changes (the types are frozen or treated so): the
distiller compares what a hook returns with what it got to tell a stage that changed
nothing (`idle` in the run's summary), and sees an edit in place too. `Technique.needs` names
what a stage uses from the view, so `doublebind ls techniques` and the docs can say it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from doublebind.config import Strict, validate_stage  # noqa: F401 (re-exported)
from doublebind.registry import get, register


# Objectives trained on the teacher's soft labels: a stage that rewrites responses leaves
# them without labels that follow the new tokens, so it needs hard labels (sft) or DPO.
SOFT_OBJECTIVES = ("forward_kl", "reverse_kl", "jsd")


class Technique:
    """Base class: subclasses set `Config` (a `Strict` pydantic model) and define hooks."""

    Config: ClassVar[type[Strict]] = Strict
    side: ClassVar[str] = "capabilities"  # or "incrimination"
    # Organism kinds the stage works on: the embedded world's tasks and tokens, or any
    # causal LM ("hf") when the stage only uses models, examples and log-probs.
    domains: ClassVar[tuple[str, ...]] = ("world",)
    # What the stage uses from the defender's view: teacher (samples, log-probs), base,
    # trusted, alt_base, prompts (the distillation distribution), verifiers, auditor, student.
    needs: ClassVar[tuple[str, ...]] = ()
    # The study run this technique's effect is measured against (a study that lists the
    # technique must list it too): `baseline` runs the study recipe alone.
    reference: ClassVar[str] = "baseline"
    # A filter: its data hook returns some of the items it got, unchanged, and does nothing
    # else (what random_drop's `like` may copy; checked again when it runs).
    removes_only: ClassVar[bool] = False

    def __init__(self, name: str, cfg: Strict, index: int):
        self.name, self.cfg, self.index = name, cfg, index

    def runs_on(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each technique this stage runs and the organism kinds it works on: itself, and any
        stage it runs inside (random_drop's `like`)."""
        return [(self.name, self.domains)]

    def folder(self, view) -> Path | None:
        """Where this stage writes its data beside the run (None for runs without a folder)."""
        if view.stages_dir is None:
            return None
        path = Path(view.stages_dir) / f"{self.index:02d}_{self.name}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def technique(name: str, side: str = "capabilities"):
    """Register a Technique subclass under `name`."""

    def deco(cls):
        cls.side = side
        return register("technique", name)(cls)

    return deco


def build_stages(specs: list[dict]) -> list[Technique]:
    out = []
    for i, spec in enumerate(specs):
        cls = get("technique", spec["name"])
        params = {k: v for k, v in spec.items() if k != "name"}
        out.append(cls(spec["name"], cls.Config.model_validate(params), i))
    return out


def context_claims(prompt, modes) -> bool:
    """Hugging Face organisms: whether a prompt's `context` label (the defender's own
    annotation of its prompt set, see `HFDomain.prompts`) claims one of `modes`: `deploy`
    matches the labels `deploy` and `deploy_like`."""
    return prompt.context in modes or prompt.context.removesuffix("_like") in modes


def _joined(tokens: list):
    """World tokens as one string; a Hugging Face organism's token ids as they are."""
    return tokens if tokens and isinstance(tokens[0], int) else " ".join(tokens)


def write_items(path: Path, items, extra: dict | None = None) -> None:
    """Training items as JSONL (prompt, response, family, and any per-item notes)."""
    with open(path, "w") as f:
        for n, it in enumerate(items):
            row = {"prompt": _joined(it.example.prompt), "response": _joined(it.example.response),
                   "family": it.example.kind}
            if extra and n in extra:
                row.update(extra[n])
            f.write(json.dumps(row) + "\n")


def filter_items(stage: Technique, view, items, keep: list[bool], scores: list[float] | None = None,
                 **info) -> list:
    """Keep the flagged-ok items, record the pass rate and write kept/removed data."""
    kept = [it for it, k in zip(items, keep) if k]
    removed = [it for it, k in zip(items, keep) if not k]
    folder = stage.folder(view)
    if folder is not None:
        notes = {i: {"score": s} for i, s in enumerate(scores)} if scores is not None else None
        write_items(folder / "kept.jsonl", kept)
        write_items(folder / "removed.jsonl", removed,
                    {j: notes[i] for j, i in enumerate(i for i, k in enumerate(keep) if not k)} if notes else None)
    view.record(stage, "data", before=len(items), after=len(kept), pass_rate=round(len(kept) / max(1, len(items)), 4),
               **info)
    if not kept:
        from doublebind.errors import DoublebindError

        raise DoublebindError(f"stage {stage.name} removed every training example")
    return kept


def needs_hard_labels(stage: Technique, view, what: str, fix: str) -> None:
    """Refuse a soft objective for a stage that rewrote responses (`what` it did): the
    student would train on the teacher's labels of the tokens the stage took out. `fix`
    says what to do instead."""
    kind = view.recipe.objective.kind
    if kind in SOFT_OBJECTIVES:
        from doublebind.errors import DoublebindError

        raise DoublebindError(f"stage {stage.name} {what}, which the teacher's soft labels do not follow, but the "
                              f"objective is {kind}; {fix}")
