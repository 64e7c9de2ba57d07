"""Small student: a fresh, smaller model has less room to carry what it was not taught.

Part of reducing cognitive slack, and on the incrimination side a weak student that cannot
learn to tell honeypots from real chances.

On a Hugging Face organism the student is a randomly initialised model of base's
architecture family (its config, vocabulary and tokenizer) with the size given here
(`student.init: fresh`, built by the organism's `student`): unlike the embedded world's
fresh students, which learn a small task language, it starts knowing no language at all, so
it needs far more steps than a student from base before it says anything.

    stages: [{name: small_student, hidden: 32, layers: 1}]

A fresh student of the embedded world knows nothing of base's task language either, so in
the recipe's steps it learns little (capability transfer 0.17 at most in the reference
matrix): its cells are decided by capability, and its misalignment side is never judged.
`start: base_layers` gives it a start that knows what base knows: base with only `layers`
of its decoder layers, evenly spaced (`students.base_layers`, as layer-dropped students of a
deeper model start). That is smaller in depth only, and a defender may do it: base's weights
are the defender's (embedded organisms only).

    stages: [{name: small_student, start: base_layers, layers: 1}]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from doublebind.config import ModelConfig, Strict
from doublebind.errors import DoublebindError
from doublebind.techniques.base import Technique, technique


@technique("small_student")
class SmallStudent(Technique):
    """small_student: start from a fresh model smaller than the teacher."""

    domains = ("world", "hf")
    needs = ("student",)

    class Config(Strict):
        start: Literal["fresh", "base_layers"] = Field(
            default="fresh", description="fresh: a new model of the sizes below; base_layers: base with only "
                                         "`layers` of its layers (embedded organisms; the other sizes are base's).")
        hidden: int = Field(default=32, gt=0, le=16_384, description="Hidden size.")
        layers: int = Field(default=1, gt=0, le=256, description="Layers.")
        heads: int = Field(default=2, gt=0, le=256, description="Attention heads.")
        intermediate: int = Field(default=128, gt=0, le=65_536, description="MLP width.")

        @model_validator(mode="after")
        def _a_model(self):
            """The sizes make a model (checked with the config, not at the stage, mid-study)."""
            ModelConfig(hidden=self.hidden, layers=self.layers, heads=self.heads, intermediate=self.intermediate)
            widths = sorted(self.model_fields_set & {"hidden", "heads", "intermediate"})
            if self.start == "base_layers" and widths:
                raise ValueError(f"start base_layers keeps base's sizes but for its layers: leave out "
                                 f"{', '.join(widths)}")
            return self

    def student(self, view, cfg):
        if self.cfg.start == "base_layers":
            if view.kind != "world":
                raise DoublebindError("small_student start base_layers works on embedded organisms only")
            return cfg.model_copy(update={"init": "base_layers", "model": ModelConfig(layers=self.cfg.layers)})
        model = ModelConfig(hidden=self.cfg.hidden, layers=self.cfg.layers, heads=self.cfg.heads,
                            intermediate=self.cfg.intermediate)
        return cfg.model_copy(update={"init": "fresh", "model": model})
