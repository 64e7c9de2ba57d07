"""Sequence packing (`training.packing`): the packed micro-batch computes the padded one's
loss, gradient and training curve, up to rounding."""

import random

import pytest
import torch

from doublebind import config
from doublebind.organisms.models import make_model
from doublebind.training import objectives as obj
from doublebind.training.batching import collate
from doublebind.training.distill import Distiller, micro_loss
from doublebind.training.packing import pack
from doublebind.types import Example, Item
from doublebind.world import vocab

from .conftest import tiny_recipe

IDS = list(vocab.token_ids().values())
V = len(IDS)
PAD = vocab.token_ids()[vocab.PAD]


def _items(n: int, seed: int) -> list[Item]:
    """Examples of uneven lengths (prompts 1-12 tokens, responses 1-8) with soft-label rows."""
    rng = random.Random(seed)
    exs = [Example([rng.choice(IDS) for _ in range(rng.randint(1, 12))], [rng.choice(IDS) for _ in range(rng.randint(1, 8))])
           for _ in range(n)]
    return [Item(e, row=i) for i, e in enumerate(exs)]


def test_the_layout_holds_every_sequence_once_with_its_own_positions():
    items = _items(40, seed=1)
    seqs = [it.example.prompt + it.example.response for it in items]
    p = pack(seqs, [len(it.example.prompt) for it in items], PAD)
    width = p.input_ids.shape[1]
    assert width == 2 * max(len(s) for s in seqs)
    assert p.input_ids.shape[0] < len(seqs)  # rows are shared
    # the padded batch's targets, in the order its loss mask takes them
    padded = collate([it.example for it in items])
    keep = padded["loss_mask"] > 0
    assert p.targets.tolist() == padded["input_ids"][:, 1:][keep].tolist()
    flat_ids, flat_pos = p.input_ids.flatten(), p.position_ids.flatten()
    start, covered = 0, torch.zeros_like(flat_ids, dtype=torch.bool)
    for it, s in zip(items, seqs):  # each response position holds the token before its target, at its own position
        n = len(it.example.response)
        rows = p.rows[start : start + n]
        start += n
        k = len(it.example.prompt) - 1
        assert flat_ids[rows].tolist() == s[k : k + n]
        assert flat_pos[rows].tolist() == list(range(k, k + n))
        assert (rows // width == rows[0] // width).all()  # one sequence never spans two rows
        first = int(rows[0]) - k  # the whole sequence, prompt included, lies there, at positions 0, 1, ...
        assert first // width == (first + len(s) - 1) // width
        assert flat_ids[first : first + len(s)].tolist() == s
        assert flat_pos[first : first + len(s)].tolist() == list(range(len(s)))
        assert not covered[first : first + len(s)].any()  # no two sequences share a place
        covered[first : first + len(s)] = True
    assert start == len(p.rows)
    # every token appears once: outside the sequences' places there is padding alone
    assert int(covered.sum()) == sum(len(s) for s in seqs) and (flat_ids[~covered] == PAD).all()
    # the same input, the same layout
    again = pack(seqs, [len(it.example.prompt) for it in items], PAD)
    assert torch.equal(again.input_ids, p.input_ids) and torch.equal(again.rows, p.rows)


def test_a_sequence_longer_than_the_row_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        pack([[1, 2, 3]], [1], PAD, width=2)


@pytest.mark.parametrize("kind", ["sft", "forward_kl", "reverse_kl", "jsd", "topk"])
def test_the_packed_loss_and_gradient_equal_the_padded(kind):
    model = make_model(config.ModelConfig(hidden=16, layers=2, heads=2, intermediate=32), seed=0)
    items = _items(24, seed=2)
    items[3].weights = [0.5] * len(items[3].example.response)  # per-token weights travel with the item
    items[5].weights = [0.0]
    g = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(len(items), 8, V, generator=g), -1)
    soft = {"logprobs": logprobs}
    if kind == "topk":
        idx, top = obj.topk_with_tail(logprobs, 4)
        soft = {"indices": idx, "logprobs": top}
    ocfg = config.ObjectiveConfig(kind="forward_kl" if kind == "topk" else kind)
    grads = []
    losses = []
    for packed in (False, True):
        model.zero_grad()
        loss = micro_loss(model, items, soft, ocfg, pack=packed)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert losses[0].abs() > 0 and grads[0].abs().max() > 0


def test_cross_attention_between_packed_sequences_would_show():
    """The check above can fail: a sequence's logits change when it may attend to the
    sequence before it in its row (positions not restarted, so one causal segment)."""
    model = make_model(config.ModelConfig(hidden=16, layers=2, heads=2, intermediate=32), seed=0)
    items = _items(24, seed=2)
    seqs = [it.example.prompt + it.example.response for it in items]
    p = pack(seqs, [len(it.example.prompt) for it in items], PAD)
    with torch.no_grad():
        right = model(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False).logits
        leaky = model(input_ids=p.input_ids, use_cache=False).logits  # no restarts: one sequence per row
    r = right.reshape(-1, V)[p.rows]
    w = leaky.reshape(-1, V)[p.rows]
    assert (r - w).abs().max() > 1e-3


def test_the_study_recipe_trains_alike_packed_and_padded(quick_organism):
    """Five steps of the real distiller from the same init: the loss curves agree."""
    org, _ = quick_organism
    curves = {}
    for packing in (True, False):
        recipe = tiny_recipe({}, training={"steps": 5, "batch": 16, "lr": 1e-3, "packing": packing},
                             prompts={"size": 64})
        d = Distiller(org, recipe, None, show_progress=False)
        assert d.pack is packing
        curves[packing] = [d.train_step(s) for s in range(5)]
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
    assert curves[True][0] != pytest.approx(curves[True][-1], rel=1e-3)  # it trained
