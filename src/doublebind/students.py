"""Where a distillation student starts.

Subliminal transfer hinges on initialisation: a student that shares the teacher's starting
weights (`base`) can pick up traits from data that carries no visible sign of them, while one
from a different init (`alt_base`, `fresh`) should not. `shrink_perturb` (Ash & Adams, 2020)
sits in between: it keeps a shrunk copy of base and adds fresh-init noise, a dial for how much
shared initialisation is left. `base_layers` is a smaller student that still starts from
what base knows: base with only some of its decoder layers, evenly spaced, the way
layer-dropped students of a deeper model are initialised. Any of them can train LoRA
adapters instead of all weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from doublebind import config
from doublebind.config import ModelConfig, StudentConfig
from doublebind.errors import DoublebindError
from doublebind.organisms.models import load_checkpoint, make_model, save_checkpoint

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER = "adapter"  # subfolder of a saved LoRA student holding the peft adapter


def organism_model_config(organism_dir: Path) -> ModelConfig:
    """The architecture of the organism's base, teacher and alt_base, from its card."""
    card_path = Path(organism_dir) / "organism.json"
    if not card_path.is_file():
        raise DoublebindError(f"not an organism folder (no organism.json): {organism_dir}")
    try:
        data = json.loads(card_path.read_text())["config"]["model"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DoublebindError(f"organism card has no config.model: {card_path}") from None
    return config.build(ModelConfig, data, str(card_path))


def _load_role(organism_dir: Path, role: str):
    path = Path(organism_dir) / role
    if not path.is_dir():
        raise DoublebindError(f"organism has no {role} checkpoint: {path}")
    return load_checkpoint(path)


def shrink_perturb(base, fresh, shrink: float, perturb: float) -> None:
    """θ ← shrink·θ_base + perturb·θ_fresh for every parameter of `base`, in place.

    Norm weights go through the same formula: treating every parameter alike keeps the rule
    the paper's, and `shrink`=1, `perturb`=0 still returns base exactly. Tied weights are
    visited once (`named_parameters` deduplicates), so they are not shrunk twice.
    """
    fresh_params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, p in base.named_parameters():
            q = fresh_params.get(name)
            if q is None or q.shape != p.shape:
                raise DoublebindError(f"shrink_perturb: fresh init does not match base at parameter {name}")
            p.copy_(shrink * p + perturb * q)


def kept_layers(n_base: int, n: int) -> list[int]:
    """`n` of base's `n_base` layer indices, evenly spaced with the first and the last among
    them; for n = 1 the first."""
    if n == 1:
        return [0]
    return [round(i * (n_base - 1) / (n - 1)) for i in range(n)]


def base_layers(base, arch: ModelConfig, layers: int, seed: int):
    """A model of `arch` with `layers` decoder layers whose every weight is base's: embeddings,
    final norm and head as they are, layer i from base's layer `kept_layers(...)[i]`."""
    if not 1 <= layers < arch.layers:
        raise DoublebindError(f"student.init base_layers keeps fewer of base's {arch.layers} layers than it has, "
                              f"from 1 to {arch.layers - 1}: model.layers is {layers} (with small_student, "
                              f"start: base_layers, its `layers`)")
    small = make_model(arch.model_copy(update={"layers": layers}), seed)
    keep, src = kept_layers(arch.layers, layers), base.state_dict()
    state = {}
    for name in small.state_dict():
        head, sep, rest = name.partition("model.layers.")
        if sep:
            i, _, tail = rest.partition(".")
            name_in_base = f"{head}model.layers.{keep[int(i)]}.{tail}"
        else:
            name_in_base = name
        state[name] = src[name_in_base]
    small.load_state_dict(state)
    return small


def make_student(cfg: StudentConfig, organism_dir: Path, seed: int):
    """A causal LM initialised as `cfg.init` says, optionally wrapped with LoRA adapters.

    The same `seed` always gives the same weights (fresh init and LoRA A matrices alike).
    """
    organism_dir = Path(organism_dir)
    if not organism_dir.is_dir():
        raise DoublebindError(f"organism folder not found: {organism_dir}")
    if cfg.init in ("base", "alt_base"):
        model = _load_role(organism_dir, cfg.init)
    elif cfg.init == "fresh":
        model = make_model(cfg.model or organism_model_config(organism_dir), seed)
    elif cfg.init == "base_layers":  # StudentConfig has checked that `model` names the layers
        model = base_layers(_load_role(organism_dir, "base"), organism_model_config(organism_dir),
                            cfg.model.layers, seed)
    else:
        arch = organism_model_config(organism_dir)
        model = _load_role(organism_dir, "base")
        shrink_perturb(model, make_model(arch, seed), cfg.shrink, cfg.perturb)
    if cfg.lora is not None:
        model = _wrap_lora(model, cfg.lora, seed)
    return model


def _wrap_lora(model, lcfg, seed: int):
    """LoRA on every attention and MLP projection; get_peft_model freezes all else."""
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                          target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    return get_peft_model(model, peft_cfg)


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_student(model, path: Path, meta: dict, tokenizer=None) -> None:
    """A standard HF checkpoint folder; a LoRA student also keeps its adapter in `adapter/`.

    The checkpoint holds merged weights so every downstream tool loads it like any model;
    the merge runs on a copy, so training can go on from `model`.
    """
    path = Path(path)
    if is_peft(model):
        merged = copy.deepcopy(model).merge_and_unload()
        save_checkpoint(merged, path, meta, tokenizer)
        model.save_pretrained(str(path / ADAPTER), safe_serialization=True)
    else:
        save_checkpoint(model, path, meta, tokenizer)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
