"""Is any of the study recipe's training wasted? The same grid at several training lengths,
side by side: runs per minute, the transfers, and how many verdicts each length shares with
the recipe's own.

    python benchmarks/recipe_length.py [--quick] [--variants 400:0.003 200:0.004 ...]
                                       [--techniques baseline ...] [--seeds 0 1 2] [--workers N]

A shorter recipe would be the cheapest speed-up of all (training is about 90% of a run), but
only if it reaches the same final transfers. Each variant `STEPS:LR` runs the default study's
first scenario (its organism seed 0) with `training.steps=STEPS`, `training.lr=LR` and four
checkpoints spread as in the recipe (`checkpoint_every = STEPS / 4`), so evaluation work is
the same in every variant. The first variant is the yardstick (default: the recipe itself,
400 steps at lr 0.003). Printed per variant: wall time, runs per minute and its ratio to the
yardstick's; then per technique the mean final capability and misalignment transfer and the
two verdicts, with how many of the grid's verdicts equal the yardstick's.

Every variant runs in this process, one after another, with `--workers` worker processes
(default: the usable cores); the organism is placed once, in a warm-up. `--quick` is the
quick study at a few steps: a smoke test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ["400:0.003", "200:0.004", "250:0.005", "300:0.003", "600:0.003"]
QUICK_VARIANTS = ["8:0.003", "4:0.003"]


def _throughput():
    """benchmarks/throughput.py, for its reader of a study's verdicts."""
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variant(text: str) -> tuple[int, float]:
    """`STEPS:LR` -> (steps, lr), with a one-line error for anything else."""
    try:
        steps, lr = text.split(":")
        out = int(steps), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not STEPS:LR (for example 200:0.004)") from None
    if out[0] < 4 or not out[1] > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: steps must be at least 4 and lr positive")
    return out


def finals(summary: Path) -> dict:
    """technique -> (mean final capability transfer, mean final misalignment transfer); nan
    where no run defines one (the zeros an undefined statistic holds are no transfer)."""
    def mean(stat: dict) -> float:
        return math.nan if stat.get("undefined") else stat["mean"]

    out = {}
    for block in json.loads(summary.read_text())["scenarios"].values():
        for tech, res in block["techniques"].items():
            f = res["final"]
            out[tech] = (mean(f["capability_transfer"]), mean(f["misalignment_transfer"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", type=variant, default=None,
                    help="training lengths as STEPS:LR, the first being the yardstick "
                         f"(default: {' '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--techniques", nargs="+", default=None, help="default: the study's own list")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=None, help="parallel workers (default: usable cores)")
    ap.add_argument("--quick", action="store_true", help="the quick study, a few steps: a smoke test")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.models import quiet_transformers
    from doublebind.studies.executor import workers_for
    from doublebind.studies.run import run_study

    quiet_transformers()
    tp = _throughput()
    variants = args.variants or [variant(v) for v in (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)]
    workers = workers_for(args.workers)
    study = ROOT / "configs" / "studies" / ("quick.yaml" if args.quick else "default.yaml")
    cfg = config.load(study, expect="study")
    listed = list(cfg.technique_stages())
    techniques = args.techniques or listed
    unknown = [t for t in techniques if t not in listed]
    if unknown:
        raise SystemExit(f"recipe_length.py: {', '.join(unknown)} not in {study.name} "
                         f"(it lists {', '.join(listed)})")
    over = [*tp.first_scenario_grid(cfg, techniques, args.seeds),
            *(["recipe_overrides.eval.n_prompts=20", "recipe_overrides.prompts.size=300"] if args.quick else [])]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-recipe-length-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = len(techniques) * len(args.seeds)
    print(f"load average {os.getloadavg()[0]:.2f}; {workers} workers; {study.name}: {len(techniques)} techniques "
          f"x seeds {args.seeds} = {runs} runs per variant; variants (steps:lr) "
          + ", ".join(f"{s}:{lr:g}" for s, lr in variants))

    t0 = time.perf_counter()
    shutil.rmtree(work / "warm-up", ignore_errors=True)
    run_study(study, work / "warm-up", show_progress=False, workers=1,
              overrides=[*over, "recipe_overrides.training.steps=1", "recipe_overrides.training.checkpoint_every=1"])
    print(f"warm-up (organism, teacher outputs): {time.perf_counter() - t0:.1f} s")

    results = []
    for steps, lr in variants:
        name = f"steps{steps}-lr{lr:g}"
        out = tp.fresh_out(work, name)
        t = time.perf_counter()
        run_study(study, out, show_progress=False, workers=workers,
                  overrides=[*over, f"recipe_overrides.training.steps={steps}", f"recipe_overrides.training.lr={lr}",
                             f"recipe_overrides.training.checkpoint_every={max(1, steps // 4)}"])
        wall = time.perf_counter() - t
        results.append((steps, lr, wall, tp.verdicts(out / "summary.json"), finals(out / "summary.json")))
        print(f"{name}: {runs} runs in {wall:.1f} s = {60 * runs / wall:.2f} runs/min")

    _, _, wall0, v0, _ = results[0]
    print(f"\n{'steps:lr':>10}  {'runs/min':>8}  {'ratio':>5}  {'verdicts as yardstick':>21}")
    for steps, lr, wall, v, _ in results:
        same = sum(v0[k] == v.get(k) for k in v0)
        print(f"{f'{steps}:{lr:g}':>10}  {60 * runs / wall:8.2f}  {wall0 / wall:5.2f}  {f'{same} of {len(v0)}':>21}")
    print("\nper technique: final capability transfer / misalignment transfer (means), verdict final / audit-selected")
    for tech in techniques:
        print(f"  {tech}")
        for steps, lr, _, v, f in results:
            cap, mis = f[tech]
            ver = [v.get(k) for k in sorted(v) if k[1] == tech]
            print(f"    {f'{steps}:{lr:g}':>10}  capability {cap:.3f}  misalignment {mis:.3f}  {' / '.join(ver)}")
    print(f"load average {os.getloadavg()[0]:.2f}; work folder {work}")


if __name__ == "__main__":
    main()
