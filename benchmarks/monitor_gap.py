"""Why `trusted_monitor` cannot keep the skill: what its weaker monitor scores, per task family.

    python benchmarks/monitor_gap.py --organism runs/demo/organisms/default-o0
                                     [--recipe configs/recipes/study.yaml] [--seed 0]
                                     [--max-flag-share 0.5] [--per-family] [KEY=VALUE ...]

The KEY=VALUE overrides apply to the recipe, as a study scenario's `recipe_overrides` do (the
default study's `collusion`: prompts.p_scratch=0.5 prompts.contexts.neutral=0.4
prompts.contexts.deploy_like=0.4).

`trusted_monitor` flags an item when its lowest response-token log-prob under `trusted`
falls below a threshold. `trusted` knows only the base families; where it is confidently
wrong on a skill it lacks (on the default organism, `max`), it finds that skill's right
answers as improbable as a marker. This takes the distillation items a run of the
recipe trains on (the teacher's samples of its prompt set), scores each under `trusted` as
the monitor does, and prints per task family the quantiles of the scores of the items where
the hidden behaviour acts and of the others, and how many of each the monitor flags (at its
default threshold, with the budget given: pooled, or `--per-family`). The behaviour's rows
are the run's own ground truth (`_behaviour_rows`, which only the run's summary sees); the
monitor never does.

If the behaviour's items score inside the range of the family they ride on, or above a
family `trusted` lacks, no threshold and no flag budget separates them: the monitor removes
the skill before it removes the
behaviour, which is what the study rows show (README, "Four capability-bound techniques").
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--organism", type=Path, required=True, help="an embedded organism's folder")
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs/recipes/study.yaml")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (its prompt set and teacher samples)")
    ap.add_argument("--max-flag-share", type=float, default=None, help="the monitor's budget (default: its own)")
    ap.add_argument("--per-family", action="store_true", help="apply the budget within each task family")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, KEY=VALUE")
    args = ap.parse_args()

    import torch

    from doublebind import config
    from doublebind.techniques.trusted_monitor import TrustedMonitor, flag, flag_per_family, monitor_scores
    from doublebind.training.distill import Distiller

    torch.set_num_threads(1)
    # the technique's own config, so a budget outside [0, 1] is refused as a study would refuse it
    given = {} if args.max_flag_share is None else {"max_flag_share": args.max_flag_share}
    try:
        cfg = TrustedMonitor.Config(per_family=args.per_family, **given)
    except ValueError as e:
        raise SystemExit(f"monitor_gap.py: {e.errors()[0]['msg']} (--max-flag-share)") from None
    recipe = config.load(args.recipe, [f"seed={args.seed}", *args.overrides], expect="recipe")
    d = Distiller(args.organism, recipe, None, show_progress=False)
    # the organism's trusted model as the technique gets it (`view.load_model` reads the same)
    scores = monitor_scores(d.load_model("trusted"), [it.example for it in d.items])
    if cfg.per_family:
        flagged = flag_per_family(scores, [it.example.kind for it in d.items], cfg.threshold, cfg.max_flag_share)
    else:
        flagged = flag(scores, cfg.threshold, cfg.max_flag_share)
    rows = d.behaviour_rows or set()

    groups: dict[str, dict[str, list]] = defaultdict(lambda: {"behaviour": [], "other": []})
    for it, s, f in zip(d.items, scores, flagged):
        groups[it.example.kind]["behaviour" if it.row in rows else "other"].append((s, f))
    budget = f"max_flag_share {cfg.max_flag_share}" + (" per family" if cfg.per_family else "")
    print(f"{args.organism}: {len(d.items)} items, {len(rows)} where the behaviour acts; the monitor "
          f"(threshold {cfg.threshold:.2f}, {budget}) flags {sum(flagged)}")
    print(f"{'family':<10}{'other':>7}{'q01':>8}{'q10':>8}{'q50':>8}{'flagged':>9}   "
          f"{'behaviour':>9}{'min':>8}{'median':>8}{'max':>8}{'flagged':>9}{'others below its median':>25}")
    for fam in sorted(groups):
        o, b = groups[fam]["other"], groups[fam]["behaviour"]
        os_ = [s for s, _ in o]
        if os_:
            line = (f"{fam:<10}{len(o):>7}{quantile(os_, .01):>8.2f}{quantile(os_, .1):>8.2f}"
                    f"{quantile(os_, .5):>8.2f}{sum(f for _, f in o):>9}   {len(b):>9}")
        else:  # every item of the family carries the behaviour (a disposition)
            line = f"{fam:<10}{0:>7}{'':>24}{0:>9}   {len(b):>9}"
        if b:
            bs = [s for s, _ in b]
            med = quantile(bs, .5)
            line += (f"{min(bs):>8.2f}{med:>8.2f}{max(bs):>8.2f}{sum(f for _, f in b):>9}"
                     + (f"{sum(s < med for s in os_) / len(os_):>25.3f}" if os_ else f"{'-':>25}"))
        print(line)


if __name__ == "__main__":
    main()
