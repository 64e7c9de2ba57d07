"""Speed changes that must not change results: collate against a per-row reference, fused
AdamW against PyTorch's single-tensor loop, the prompts hash against its `asdict` form."""

import random

import torch

from doublebind import config
from doublebind.organisms.models import make_model
from doublebind.training.batching import collate
from doublebind.training.loop import Loop, fit
from doublebind.types import Example


def _reference(examples, pad):
    """The plain per-row construction collate must equal."""
    seqs = [e.prompt + e.response for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1))
    for b, (s, e) in enumerate(zip(seqs, examples)):
        ids[b, : len(s)] = torch.tensor(s)
        attn[b, : len(s)] = 1
        mask[b, len(e.prompt) - 1 : len(s) - 1] = 1.0  # targets that are response tokens
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask}


def test_prompts_hash_is_the_asdict_hash():
    """The teacher-outputs cache keys stay what they were: the same digest as hashing each
    prompt's `asdict` JSON, on world prompts and on token-id prompts."""
    import hashlib
    import json
    from dataclasses import asdict

    from doublebind.prompts import build_prompts, prompts_hash
    from doublebind.types import Prompt
    from doublebind.world.data import World

    def reference(prompts):
        h = hashlib.sha256()
        for p in prompts:
            h.update(json.dumps(asdict(p), sort_keys=True).encode())
        return h.hexdigest()[:16]

    cfg = config.load(preset="quick")
    world = World.from_config(cfg.world, cfg.seed)
    prompts = build_prompts(world, config.PromptsConfig(size=200), seed=3)
    ids = [Prompt([1, 5, 9], "file", "file"), Prompt([], "ask", "neutral")]
    for ps in (prompts, ids, []):
        assert prompts_hash(ps) == reference(ps)
    assert prompts_hash(prompts) != prompts_hash(prompts[1:])


def test_collate_equals_the_per_row_reference():
    rng = random.Random(0)
    for _ in range(50):
        exs = [Example([rng.randrange(1, 90) for _ in range(rng.randint(1, 9))],
                       [rng.randrange(1, 90) for _ in range(rng.randint(0, 7))]) for _ in range(rng.randint(1, 6))]
        got, want = collate(exs, pad_id=0), _reference(exs, 0)
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    b = collate([Example([5, 6], [7, 8, 9])], pad_id=0)
    assert b["loss_mask"].tolist() == [[0.0, 1.0, 1.0, 1.0]]  # targets 7, 8, 9 count; 6 (prompt) does not


def test_fused_adamw_takes_the_same_steps_to_rounding():
    exs = [Example([1, 5, 6, 7], [8, 9, 2]), Example([1, 4], [10, 11, 12, 2])]
    out = []
    for fused in (False, True):
        model = make_model(config.ModelConfig(hidden=32, layers=1, heads=2, intermediate=64), seed=0)
        loop = Loop(model.parameters(), steps=20, lr=1e-2, warmup=0.1, fused=fused)
        assert bool(loop.opt.param_groups[0]["fused"]) == fused
        losses = fit(model, lambda step: collate(exs), loop)
        out.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (l0, w0), (l1, w1) = out
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1, w0, rtol=1e-4, atol=1e-5)
