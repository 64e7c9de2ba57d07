"""Batched generation with a KV cache: greedy, temperature and top-p sampling.

Works on token ids with any Hugging Face causal LM. Prompts are left-padded; positions are
counted from each prompt's first real token so padding does not shift them.
"""

from __future__ import annotations

import inspect

import torch


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """Next token per row from logits [B, V]."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int, pad_id: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             batch_size: int = 512) -> list[list[int]]:
    """Continuations (without the prompt, cut after eos) for each prompt."""
    # on the model's device: torch.multinomial refuses a CPU generator for CUDA probabilities
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        out += _generate_batch(model, prompts[i : i + batch_size], max_new_tokens, eos_id, pad_id,
                               temperature, top_p, gen)
    return out


def _cache_arg(model) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept either.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(res):
    return res.cache if getattr(res, "cache", None) is not None else res.past_key_values


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids counted from each prompt's first token."""
    b, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((b, width), dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, device=device)
        attn[r, width - len(p):] = 1
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def _generate_batch(model, prompts, max_new, eos_id, pad_id, temperature, top_p, gen):
    device = next(model.parameters()).device
    b = len(prompts)
    ids, attn, pos = left_pad(prompts, pad_id, device)
    cache_arg = _cache_arg(model)
    res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    past, logits, next_pos = _cache_of(res), res.logits[:, -1], pos[:, -1] + 1
    done = torch.zeros(b, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for _ in range(max_new):
        tok = _pick(logits, temperature, top_p, gen)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        steps.append(tok)
        done |= tok == eos_id
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=device)], dim=1)
        res = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                    use_cache=True, **{cache_arg: past})
        past, logits, next_pos = _cache_of(res), res.logits[:, -1], next_pos + 1
    toks = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(b)]
    outs = []
    for row in toks:
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        outs.append(row[:cut])
    return outs
