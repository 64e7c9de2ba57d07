"""What packing and compiling an organism build's training steps would gain, in one process.

    python benchmarks/build_step.py [--preset default] [--blocks 6] [--steps 20]

Organism builds are most of `make demo`'s first half (two builds side by side, each about
280 s on a slow 2-core machine) and run the padded, eager steps of `training.loop.fit`. This
script times that step against the two changes the distillation runs already have: packed
sequences (`training.packing`) and a compiled forward (`training.compile`), on the preset's
base model and the teacher's training mix (batch and learning rate as in the preset), one
thread, in alternating blocks of `--steps` steps so a machine's drift stays out of the
ratios. It prints each mode's median milliseconds a step, its ratio to the padded eager
step, and what the preset's 4 roles' steps (base, teacher, alt_base, trusted at the base
model's speed: an upper bound) would take at that speed.

It measures a change the build does not have: the build's steps are part of what an
organism's hash covers, so changing them rehashes every organism, and
`tests/test_reference.py` then requires both reference studies (docs/results and
docs/results/matrix, 2 h 20 min) to be regenerated. Run it alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

MODES = ("padded", "packed", "packed+compiled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", help="organism preset")
    ap.add_argument("--blocks", type=int, default=6, help="rounds of one block per mode")
    ap.add_argument("--steps", type=int, default=20, help="training steps per block")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from doublebind import config
    from doublebind.organisms.models import make_model, quiet_transformers
    from doublebind.training.batching import _ids, collate
    from doublebind.training.distill import student_logits
    from doublebind.training.loop import Loop
    from doublebind.training.objectives import sft_nll
    from doublebind.training.packing import pack
    from doublebind.world import vocab
    from doublebind.world.data import World

    quiet_transformers()
    torch.set_num_threads(1)
    cfg = config.load(preset=args.preset)
    tcfg = cfg.teacher_training
    world = World.from_config(cfg.world, cfg.seed)
    rng = random.Random(f"data-{cfg.seed}")
    pool = [world.sample(rng, "teacher", world.all_families, p_trigger=tcfg.p_trigger, p_ask=tcfg.p_ask,
                         p_scratch=tcfg.p_scratch) for _ in range(4000)]
    pad = vocab.token_ids()[vocab.PAD]
    order = random.Random("order")

    def padded(model, examples) -> torch.Tensor:  # `fit`'s step
        b = collate(examples)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        return sft_nll(logits, b["input_ids"][:, 1:], b["loss_mask"])

    def packed(model, examples, compiled: bool = False) -> torch.Tensor:
        p = pack([_ids(e.prompt + e.response) for e in examples], [len(e.prompt) for e in examples], pad)
        out = student_logits(model, compiled, input_ids=p.input_ids, position_ids=p.position_ids)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).index_select(0, p.rows).float(), p.targets)

    losses = {"padded": padded, "packed": packed,
              "packed+compiled": lambda m, ex: packed(m, ex, compiled=True)}
    runs = {}
    for mode in MODES:
        model = make_model(cfg.model, cfg.seed)
        model.train()
        loop = Loop(model.parameters(), steps=10**6, lr=tcfg.lr, warmup=0.0)
        runs[mode] = (model, loop)

    def block(mode: str, n: int) -> float:
        model, loop = runs[mode]
        t0 = time.perf_counter()
        for s in range(n):
            examples = [pool[order.randrange(len(pool))] for _ in range(tcfg.batch)]

            def accumulate() -> float:
                loss = losses[mode](model, examples)
                loss.backward()
                return loss.item()

            loop.step(s, accumulate)
        return (time.perf_counter() - t0) / n * 1000

    t0 = time.perf_counter()
    for mode in MODES:  # warm-up; the compiled mode compiles here
        block(mode, 5)
    warm = time.perf_counter() - t0
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.blocks):
        for mode in MODES:
            times[mode].append(block(mode, args.steps))
    steps = 2 * cfg.base_training.steps + cfg.teacher_training.steps + cfg.trusted_training.steps
    print(f"{args.preset} organism's base model, teacher mix, batch {tcfg.batch}; {args.blocks} x {args.steps} "
          f"steps per mode, 1 thread; warm-up and compilation {warm:.1f} s; load average {os.getloadavg()[0]:.2f}")
    base = statistics.median(times["padded"])
    print(f"{'step':16} {'ms/step':>8} {'ratio':>6} {'steps of a build (' + str(steps) + ')':>28}")
    for mode in MODES:
        ms = statistics.median(times[mode])
        print(f"{mode:16} {ms:8.1f} {base / ms:5.2f}x {ms * steps / 1000:26.0f} s")


if __name__ == "__main__":
    main()
