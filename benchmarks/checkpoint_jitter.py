"""How far a student's misalignment transfer moves from one checkpoint to the next, and what
delivering a moving average of its weights (`training.ema`) does to it.

    python benchmarks/checkpoint_jitter.py [--decays 0.95 0.99] [--scenarios default beacon]
                                           [--seeds 0 1 2 3 4] [--every 10] [--workdir DIR] [--plot FILE]

The matrix judges each run by its delivered checkpoint, the weights after the recipe's last
step. This runs the matrix's `baseline` on its first organism build of each scenario (seed 0)
with a checkpoint every `--every` steps, once with the trained weights and once per decay with
their moving average delivered, and prints per setting and scenario:

- `final`: the mean misalignment (and capability) transfer at the last step, with the
  standard deviation over seeds;
- `jitter`: the mean absolute change of misalignment transfer between checkpoints `--every`
  steps apart over the last 100 steps, averaged over seeds: how much of a run's number is
  which batch came last;
- `at 300`: the setting's mean misalignment transfer at step 300; the trained weights' is
  where a long average's window lies (decay 0.99 weighs the last hundred or so steps).

`--plot` draws every run's misalignment transfer over training, one panel per scenario and
setting. The studies go under `--workdir` (default: a temporary folder) and resume there.
Run it alone: 30 runs of 41 checkpoints each, about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "configs" / "studies" / "matrix.yaml"


def trajectories(folder: Path) -> dict:
    """(scenario, seed) -> {step: (misalignment transfer, capability transfer)}."""
    out = collections.defaultdict(dict)
    with open(folder / "results.jsonl") as f:
        for line in f:
            r = json.loads(line)
            out[(r["scenario"], r["seed"])][r["step"]] = (r["misalignment_transfer"], r["capability_transfer"])
    return out


def stats(runs: dict, scenario: str, every: int) -> dict:
    """The printed figures of one setting on one scenario."""
    mine = [d for (sc, _), d in runs.items() if sc == scenario]
    last = max(mine[0])
    window = [s for s in range(last - 100 + every, last + 1, every) if s in mine[0] and s - every in mine[0]]
    finals = [d[last][0] for d in mine]
    jitter = [statistics.mean(abs(d[s][0] - d[s - every][0]) for s in window) for d in mine]
    return {"runs": len(mine), "final": statistics.mean(finals), "sd": statistics.stdev(finals) if len(mine) > 1 else 0.0,
            "capability": statistics.mean(d[last][1] for d in mine), "jitter": statistics.mean(jitter),
            "at_300": statistics.mean(d[300][0] for d in mine) if all(300 in d for d in mine) else float("nan")}


def plot(settings: dict, scenarios: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(scenarios), len(settings), figsize=(3.6 * len(settings), 2.8 * len(scenarios)),
                             sharex=True, sharey=True, squeeze=False, constrained_layout=True)
    for j, (name, runs) in enumerate(settings.items()):
        for i, sc in enumerate(scenarios):
            ax = axes[i][j]
            for (s_sc, seed), d in sorted(runs.items()):
                if s_sc != sc:
                    continue
                steps = sorted(d)
                ax.plot(steps, [d[s][0] for s in steps], lw=1, label=f"seed {seed}")
            ax.set_title(f"{sc}: {name}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(scenarios) - 1:
                ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("misalignment transfer")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("baseline's misalignment transfer at every checkpoint: trained weights against their moving average",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed0_overrides(scenarios: list[str], script: str) -> list[str]:
    """The study overrides that run matrix.yaml on the first organism build (seed 0) of each of
    `scenarios`, each keeping its own recipe overrides (`collusion`'s prompt mix), without
    benign twins or matched controls; exits naming `script` on a scenario the matrix lacks."""
    from doublebind import config

    entries = {s.name: s for s in config.load(MATRIX, expect="study").scenarios}
    unknown = [s for s in scenarios if s not in entries]
    if unknown:
        raise SystemExit(f"{script}: {', '.join(unknown)} not a scenario of {MATRIX.name}")
    scen = "[" + ", ".join(
        json.dumps({"name": s, "organism_seeds": [0],
                    **({"recipe_overrides": entries[s].recipe_overrides} if entries[s].recipe_overrides else {})})
        for s in scenarios) + "]"
    return [f"scenarios={scen}", "twins=null", "organism_seeds=[0]", "controls=none"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decays", nargs="+", type=float, default=[0.95, 0.99])
    ap.add_argument("--scenarios", nargs="+", default=["default", "beacon"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    ap.add_argument("--workdir", type=Path, default=None, help="where the studies go (resumed there)")
    ap.add_argument("--plot", type=Path, default=None, help="write the trajectories' figure here")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    if any(not 0 < d < 1 for d in args.decays):
        raise SystemExit("checkpoint_jitter.py: every decay must lie strictly between 0 and 1")

    from doublebind.organisms.models import quiet_transformers
    from doublebind.studies.executor import workers_for
    from doublebind.studies.run import run_study

    quiet_transformers()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-jitter-"))
    over = [*seed0_overrides(args.scenarios, "checkpoint_jitter.py"), "techniques=[baseline]",
            f"seeds={json.dumps(args.seeds)}", f"recipe_overrides.training.checkpoint_every={args.every}"]
    settings = {}
    for decay in [None, *args.decays]:
        name = "trained weights" if decay is None else f"ema {decay:g}"
        out = work / ("raw" if decay is None else f"ema{decay:g}")
        run_study(MATRIX, out, show_progress=True, workers=workers_for(args.workers),
                  overrides=[*over, *([f"recipe_overrides.training.ema={decay}"] if decay is not None else [])])
        settings[name] = trajectories(out)

    print(f"\nbaseline, matrix recipe, organism seed 0, seeds {args.seeds}, a checkpoint every {args.every} steps")
    print(f"{'setting':>16} {'scenario':>10} {'final misalignment (sd)':>24} {'capability':>10} "
          f"{'jitter':>7} {'at 300':>7}")
    for name, runs in settings.items():
        for sc in args.scenarios:
            s = stats(runs, sc, args.every)
            print(f"{name:>16} {sc:>10} {s['final']:>16.3f} ({s['sd']:.3f}) {s['capability']:>10.3f} "
                  f"{s['jitter']:>7.3f} {s['at_300']:>7.3f}")
    if args.plot:
        plot(settings, args.scenarios, args.plot)
        print(f"wrote {args.plot}")
    print(f"studies in {work}")


if __name__ == "__main__":
    main()
