"""Sequence packing against padding: one study-recipe training step, both ways, in one process.

    python benchmarks/packing.py [--preset default] [--blocks 8] [--steps 20]

One Distiller on the study recipe (`configs/recipes/study.yaml`, batch 64) trains in
alternating blocks of `--steps` steps, padded (`training.packing=false`) then packed, for
`--blocks` rounds, one thread; it prints each mode's median time a step and their ratio,
and the share of a padded batch's tokens that are real (what packing stops computing).
Alternating blocks in one process keep a machine's drift out of the ratio; run it alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "study.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", help="organism preset")
    ap.add_argument("--blocks", type=int, default=8, help="rounds of (padded, packed) blocks")
    ap.add_argument("--steps", type=int, default=20, help="training steps per block")
    args = ap.parse_args()

    import torch

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.training.distill import Distiller

    quiet_transformers()
    torch.set_num_threads(1)
    org = Path("runs/bench") / f"organism-{args.preset}"
    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
        build_organism(config.load(preset=args.preset), org, show_progress=False)
    d = Distiller(org, config.load(RECIPE, [], expect="recipe"), None, show_progress=False)
    batch = d.recipe.training.batch
    lengths = [len(it.example.prompt) + len(it.example.response) for it in d.items]
    rng = random.Random(0)
    real = padded = 0
    for _ in range(200):
        drawn = [lengths[rng.randrange(len(lengths))] for _ in range(batch)]
        real, padded = real + sum(drawn), padded + batch * max(drawn)
    for s in range(5):  # warm-up
        d.train_step(s)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.blocks):
        for packed in (False, True):
            d.pack = packed
            t0 = time.perf_counter()
            for s in range(args.steps):
                d.train_step(s)
            times[packed].append((time.perf_counter() - t0) / args.steps * 1000)
    pad, pack = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.preset} organism, study recipe (batch {batch}), {args.blocks} x {args.steps} steps each way, "
          f"1 thread; load average {os.getloadavg()[0]:.2f}")
    print(f"real tokens in a padded batch: {real / padded:.3f} (200 batches)")
    print(f"padded {pad:.1f} ms a step, packed {pack:.1f} ms (medians of blocks): packed {pad / pack:.2f}x")


if __name__ == "__main__":
    main()
