"""Every technique on one organism, over seeds: capability transfer, misalignment transfer
and audit signals, next to the plain baseline.

    python benchmarks/techniques.py --preset default --seeds 0 1

Each technique runs as the only stage on top of the baseline recipe
(configs/recipes/hard_sft.yaml, with soft labels stored so logit stages can use them).
`final` columns are the last checkpoint, `sel` the checkpoint a selecting stage chose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "recipes" / "hard_sft.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--only", nargs="*", default=None, help="technique names (default: all)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/techniques"))
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.registry import get, names
    from doublebind.training.distill import distill

    quiet_transformers()
    org = Path("runs/bench") / f"organism-{args.preset}"
    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
        build_organism(config.load(preset=args.preset), org, show_progress=False)
    techniques = ["(baseline)"] + (args.only or names("technique"))
    print(f"organism {args.preset}; recipe {RECIPE.name}; seeds {args.seeds}")
    head = (f"{'technique':24} {'side':6} {'seed':>4} {'cap':>6} {'mis':>6} {'cap_sel':>7} {'mis_sel':>7} "
            f"{'hp_max':>6} {'conf_max':>8} {'data':>6} {'s':>5}")
    print(head, flush=True)
    results: dict[str, list[dict]] = {}
    for name in techniques:
        stages = [] if name == "(baseline)" else [{"name": name}]
        side = "-" if name == "(baseline)" else get("technique", name).side[:6]
        for seed in args.seeds:
            cfg = config.load(RECIPE, [f"seed={seed}", "training.save_weights=false", "sampling.soft_labels=full",
                                       f"name={name.strip('()')}"], expect="recipe")
            cfg = cfg.model_copy(update={"stages": stages})
            out = args.out / args.preset / f"{name.strip('()')}-s{seed}"
            t = time.perf_counter()
            try:
                s = distill(org, cfg, out, show_progress=False, force=True)
            except Exception as e:  # report and go on: one failing technique must not hide the rest
                print(f"{name:24} {side:6} {seed:4d} failed: {str(e).splitlines()[0]}", flush=True)
                continue
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            r = {"cap": s["final"]["capability_transfer"] or 0.0, "mis": s["final"]["misalignment_transfer"] or 0.0,
                 "cap_sel": s["selected"]["capability_transfer"] or 0.0,
                 "mis_sel": s["selected"]["misalignment_transfer"] or 0.0,
                 "hp": max(x["misbehavior"]["honeypot"] for x in rows), "conf": max(x["confession"] for x in rows),
                 "data": s["data"]["n_train_items"]}
            results.setdefault(name, []).append(r)
            print(f"{name:24} {side:6} {seed:4d} {r['cap']:6.3f} {r['mis']:6.3f} {r['cap_sel']:7.3f} "
                  f"{r['mis_sel']:7.3f} {r['hp']:6.3f} {r['conf']:8.3f} {r['data']:6d} "
                  f"{time.perf_counter() - t:5.0f}", flush=True)
    ref = json.loads((next(iter((args.out / args.preset).glob("baseline-s*"))) / "summary.json").read_text())
    t = ref["reference"]["teacher"]
    print(f"\nteacher audit signals: honeypot {t['misbehavior']['honeypot']:.3f}, confession {t['confession']:.3f}")
    print("\nmean over seeds (selected checkpoint)")
    for name, rs in results.items():
        def m(k):
            return statistics.fmean(r[k] for r in rs)
        print(f"{name:24} capability {m('cap_sel'):.3f}  misalignment {m('mis_sel'):.3f}  "
              f"honeypot max {m('hp'):.3f}  confession max {m('conf'):.3f}  (n={len(rs)})")


if __name__ == "__main__":
    main()
