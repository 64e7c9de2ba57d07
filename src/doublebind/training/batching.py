"""Turn token-string examples into padded tensors with a completion-only loss mask."""

from __future__ import annotations

import torch

from doublebind.world import vocab


def _ids(tokens: list) -> list[int]:
    """World tokens are encoded; Hugging Face organisms' examples already hold token ids."""
    return tokens if tokens and isinstance(tokens[0], int) else vocab.encode(tokens)


def collate(examples, pad_id: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `loss_mask` (1 on response tokens).

    `examples` have `.prompt` and `.response` token lists (world tokens or token ids). loss_mask[b, t] marks positions
    whose *target* is a response token, i.e. it is aligned with input_ids[:, 1:].
    """
    pad = vocab.token_ids()[vocab.PAD] if pad_id is None else pad_id
    seqs = [_ids(e.prompt + e.response) for e in examples]
    n_prompt = [len(e.prompt) for e in examples]  # >= 1: every prompt starts with <bos> or a template
    width = max(len(s) for s in seqs)
    # Padded Python lists, one tensor each: per-row tensor writes cost more than the step's loss.
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)  # [B, S]
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)  # [B, S]
    loss_mask = torch.tensor([[0.0] * (p - 1) + [1.0] * (len(s) - p) + [0.0] * (width - len(s))
                              for s, p in zip(seqs, n_prompt)], dtype=torch.float)  # [B, S-1]
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}


def model_device(model) -> torch.device:
    """Where a model's weights live (the first parameter's device; CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device` (the same tensors when already there)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def response_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probabilities of every next token, in fp32: [batch, seq-1, vocab].

    The forward runs on the model's device; the result lives where the batch does, so callers
    that index it with the batch's own tensors (targets, masks) work with a model on a GPU."""
    where = batch["input_ids"].device
    b = to_device(batch, model_device(model))
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).to(where)

