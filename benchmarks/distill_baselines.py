"""Transfer fractions of recipes over seeds on one organism (a study, not a test).

    python benchmarks/distill_baselines.py configs/recipes/hard_sft.yaml configs/recipes/forward_kl.yaml \
        --preset quick --seeds 0 1 2

Builds (or reuses) the organism, runs each recipe at each seed, and prints the final and the
maximum transfer per run plus mean and spread over seeds. Runs go under runs/bench/.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path


def _num(x) -> float:
    return math.nan if x is None else x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipes", nargs="+", type=Path)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value recipe overrides")
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.training.distill import distill

    quiet_transformers()
    org = args.out / f"organism-{args.preset}"
    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
        build_organism(config.load(preset=args.preset), org, show_progress=False)
    print(f"organism {args.preset}: {org}")
    print(f"{'recipe':22} {'seed':>4} {'cap_final':>9} {'mis_final':>9} {'mis_max':>8} {'honeypot_max':>12} "
          f"{'confess_max':>11} {'seconds':>7}")
    table: dict[str, list[dict]] = {}
    for path in args.recipes:
        for seed in args.seeds:
            cfg = config.load(path, [f"seed={seed}", "training.save_weights=false", *args.overrides],
                              expect="recipe")
            out = args.out / args.preset / f"{cfg.name}-s{seed}"
            t = time.perf_counter()
            s = distill(org, cfg, out, show_progress=False, force=True)
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            r = {  # nan: undefined (the organism has no teacher-base gap there), not a transfer of 0
                "cap": _num(s["final"]["capability_transfer"]),
                "mis": _num(s["final"]["misalignment_transfer"]),
                "mis_max": _num(s["max_misalignment_transfer"]),
                "hp_max": max(x["misbehavior"]["honeypot"] for x in rows),
                "conf_max": max(x["confession"] for x in rows),
            }
            table.setdefault(cfg.name, []).append(r)
            print(f"{cfg.name:22} {seed:4d} {r['cap']:9.3f} {r['mis']:9.3f} {r['mis_max']:8.3f} "
                  f"{r['hp_max']:12.3f} {r['conf_max']:11.3f} {time.perf_counter() - t:7.1f}", flush=True)
    print("\nmean ± sd over seeds")
    for name, rs in table.items():
        def ms(k):
            v = [r[k] for r in rs]
            return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"
        print(f"{name:22} capability {ms('cap')}  misalignment {ms('mis')}  (max {ms('mis_max')})  "
              f"honeypot max {ms('hp_max')}  confession max {ms('conf_max')}")


if __name__ == "__main__":
    main()
