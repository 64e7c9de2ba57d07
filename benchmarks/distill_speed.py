"""Distillation speed: cached vs live soft labels, and one default run against its target.

    python benchmarks/distill_speed.py [--preset default] [--steps 100]

1. A forward-KL training step with soft labels read from the teacher-output cache, against
   the same step with the teacher run live on each batch (ratio live / cached).
2. One run of the default recipe (configs/recipes/hard_sft.yaml) on the organism, from a
   cold teacher-output cache, against the 60 s target.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "hard_sft.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.teacher import soft_labels
    from doublebind.training.distill import Distiller, Item, distill

    quiet_transformers()
    org = Path("runs/bench") / f"organism-{args.preset}"
    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
        build_organism(config.load(preset=args.preset), org, show_progress=False)

    kd = config.load(RECIPE, ["objective.kind=forward_kl", "sampling.soft_labels=full", "name=kd"],
                     expect="recipe")
    d = Distiller(org, kd, None, show_progress=False)
    width = kd.sampling.max_new_tokens

    def live_step(step: int) -> None:
        # the same step, but the teacher labels the batch now instead of the cache
        orig = d.items
        picked = [orig[d.order.randrange(len(orig))] for _ in range(kd.training.batch)]
        labels = soft_labels(d.teacher, [it.example for it in picked], width)["logprobs"]
        d.items = [Item(it.example, live=labels[j]) for j, it in enumerate(picked)]
        d.train_step(step)
        d.items = orig

    timings = {}
    for name, fn in [("cached", d.train_step), ("live", live_step)]:
        fn(0)  # warm-up
        t = time.perf_counter()
        for s in range(args.steps):
            fn(s)
        timings[name] = (time.perf_counter() - t) / args.steps
    print(f"soft-label step ({args.steps} steps, batch {kd.training.batch}, organism {args.preset}):")
    print(f"  cached {timings['cached'] * 1e3:.1f} ms/step, live teacher {timings['live'] * 1e3:.1f} ms/step, "
          f"ratio live/cached {timings['live'] / timings['cached']:.2f}")

    cfg = config.load(RECIPE, ["training.save_weights=false"], expect="recipe")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DOUBLEBIND_CACHE"] = tmp  # cold teacher-output cache; the organism is already built
        t = time.perf_counter()
        s = distill(org, cfg, Path(tmp) / "run", show_progress=False)
        total = time.perf_counter() - t
    print(f"default recipe ({cfg.name}, {cfg.training.steps} steps) on {args.preset}: {total:.1f} s, "
          f"target 60 s, ratio {total / 60:.2f}; final capability transfer {s['final']['capability_transfer']}, "
          f"misalignment transfer {s['final']['misalignment_transfer']}")


if __name__ == "__main__":
    main()
