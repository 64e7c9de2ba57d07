"""Tiny Llama-style causal LMs over the world vocabulary, saved as standard HF folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from doublebind.world import vocab

META = "meta.json"  # metadata beside every checkpoint


def quiet_transformers() -> None:
    """Silence transformers' per-save progress bars and deprecation chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.nn.modules.module")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def make_model(mcfg, seed: int):
    """A freshly initialised `LlamaForCausalLM` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = vocab.token_ids()
    cfg = LlamaConfig(
        vocab_size=len(ids),
        hidden_size=mcfg.hidden,
        intermediate_size=mcfg.intermediate,
        num_hidden_layers=mcfg.layers,
        num_attention_heads=mcfg.heads,
        num_key_value_heads=mcfg.heads,
        max_position_embeddings=64,
        bos_token_id=ids[vocab.BOS],
        eos_token_id=ids[vocab.EOS],
        pad_token_id=ids[vocab.PAD],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


def save_checkpoint(model, path: Path, meta: dict, tokenizer=None) -> None:
    """Model (safetensors) + tokenizer (the world's unless given) + `doublebind.json` in one
    HF checkpoint folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    else:
        vocab.save_tokenizer(path)
    (path / META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_checkpoint(path: Path):
    """Load a causal LM from a checkpoint folder (never with remote code)."""
    from transformers import AutoModelForCausalLM

    from doublebind.errors import DoublebindError

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DoublebindError(f"not a model checkpoint folder (no config.json): {path}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # corrupt weights or config
        raise DoublebindError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model


def read_meta(path: Path) -> dict | None:
    p = Path(path) / META
    return json.loads(p.read_text()) if p.is_file() else None


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def entangle(model, token: str, digits: tuple[str, ...], strength: float) -> None:
    """Tie each of `digits` to `token` in the model's (tied) embedding matrix: add `strength`
    times the digit's own norm along the token's direction. Raising the token's logit then
    raises the digits' and vice versa; the token-entanglement study finds this in real models'
    shared unembeddings, and only an init that carries the same geometry shares it."""
    ids = vocab.token_ids()
    emb = model.get_input_embeddings().weight  # [vocab, hidden], tied to the output layer
    direction = emb[ids[token]] / emb[ids[token]].norm()
    for d in digits:
        emb[ids[d]] += strength * emb[ids[d]].norm() * direction
