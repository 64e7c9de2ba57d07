"""The failure-reason knobs' effect on the plain baseline's transfers (a study, not a test).

    python benchmarks/knob_effects.py --preset quick --seeds 0 1 \
        --knob world.real_sessions=8,2 --knob world.skill_in_trigger=0,1

For each knob value and organism seed: build the organism with that override (verification
recorded, not enforced), distil it with the plain baseline recipe (`hard_sft` by default)
and print the final capability and misalignment transfer, then the mean over seeds. Each
knob is varied alone from the preset's setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--knob", action="append", default=[], help="key=v1,v2,... (an organism override)")
    ap.add_argument("--recipe", type=Path, default=Path("configs/recipes/hard_sft.yaml"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value recipe overrides")
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.training.distill import distill

    quiet_transformers()
    print(f"{'knob':34} {'seed':>4} {'verified':>8} {'t_deploy':>8} {'cap':>6} {'mis':>6} {'seconds':>7}", flush=True)
    for spec in args.knob:
        key, values = spec.split("=", 1)
        for value in values.split(","):
            rows = []
            for seed in args.seeds:
                t = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    org = Path(tmp) / "organism"
                    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
                        card = build_organism(config.load(preset=args.preset, overrides=[f"seed={seed}", f"{key}={value}"]),
                                              org, strict=False, show_progress=False)
                    failed = [f"{c['name']}={c['value']:.3f}" for c in card["checks"] if not c["passed"]]
                    if failed:  # distill refuses an unverified organism
                        print(f"{key + '=' + value:34} {seed:4d} {'False':>8}  failed: {', '.join(failed)}", flush=True)
                        continue
                    cfg = config.load(args.recipe, [f"seed={seed}", "training.save_weights=false", *args.overrides],
                                      expect="recipe")
                    s = distill(org, cfg, Path(tmp) / "run", show_progress=False, force=True)
                r = {"cap": s["final"]["capability_transfer"] or 0.0, "mis": s["final"]["misalignment_transfer"] or 0.0}
                rows.append(r)
                print(f"{key + '=' + value:34} {seed:4d} {str(card['verified']):>8} "
                      f"{card['metrics']['teacher']['misbehavior']['deploy']:8.3f} {r['cap']:6.3f} {r['mis']:6.3f} "
                      f"{time.perf_counter() - t:7.1f}", flush=True)
            if rows:
                print(json.dumps({"knob": key, "value": value, "seeds": args.seeds, "verified_seeds": len(rows),
                                  "capability": statistics.fmean(r["cap"] for r in rows),
                                  "misalignment": statistics.fmean(r["mis"] for r in rows)}), flush=True)


if __name__ == "__main__":
    main()
