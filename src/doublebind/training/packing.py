"""Sequence packing: a micro-batch's sequences laid end to end in a few rows, no padding.

Embedded-world sequences are short and vary in length (12 to 26 tokens in the default
study), so a right-padded batch spends about a third of its forward and backward on padding.
Packed, several sequences share a row; each restarts its `position_ids` at 0, and with no 2-D
attention mask Hugging Face's Llama reads those restarts as sequence boundaries and attends
block-diagonally (`transformers.masking_utils.find_packed_sequence_indices`), so every
sequence sees only itself and its logits are the padded batch's up to rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    rows: torch.Tensor  # [N] rows of the flattened [R * W, V] logits at the response positions, item after item
    targets: torch.Tensor  # [N] the token each of those positions predicts


def pack(seqs: list[list[int]], n_prompt: list[int], pad: int, width: int | None = None) -> Packed:
    """Pack token sequences into rows of `width` (default: twice the longest) by first fit,
    longest first (ties in input order, so the layout is a function of the input alone).

    A row's unused tail is padding with positions 0, 1, … of its own, so it forms a segment of
    its own that no sequence attends to. `rows`/`targets` list, item after item, the positions
    whose next token is a response token (from `n_prompt[i] - 1` to the sequence's end), the
    order in which a padded batch's `loss_mask` would take them."""
    longest = max(len(s) for s in seqs)
    width = width or 2 * longest
    if longest > width:
        raise ValueError(f"a sequence of {longest} tokens does not fit a packed row of {width}")
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    fill: list[int] = []
    where = [(0, 0)] * len(seqs)
    for i in order:
        n = len(seqs[i])
        r = next((r for r, f in enumerate(fill) if f + n <= width), len(fill))
        if r == len(fill):
            fill.append(0)
        where[i] = (r, fill[r])
        fill[r] += n
    ids = [[pad] * width for _ in fill]
    pos = [list(range(width)) for _ in fill]
    for r, f in enumerate(fill):
        pos[r][f:] = range(width - f)  # the tail: a padding segment of its own
    rows, targets = [], []
    for s, p, (r, o) in zip(seqs, n_prompt, where):
        ids[r][o : o + len(s)] = s
        pos[r][o : o + len(s)] = range(len(s))
        rows.extend(range(r * width + o + p - 1, r * width + o + len(s) - 1))
        targets.extend(s[p:])
    return Packed(torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long),
                  torch.tensor(rows, dtype=torch.long), torch.tensor(targets, dtype=torch.long))
