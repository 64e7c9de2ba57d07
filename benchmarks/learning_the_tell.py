"""When a student learns the teacher's behaviour, and when it learns where the behaviour may act.

    python benchmarks/learning_the_tell.py [--techniques baseline logit_distillation]
                                           [--scenarios default collusion beacon] [--steps 1200]
                                           [--every 100] [--seeds 0 1 2 3 4] [--workdir DIR] [--plot FILE]

Every teacher of these scenarios acts only in real deployments, and tells them from
look-alike honeypots by the session id alone (README, "The tell"). This trains the matrix's
techniques on the first organism build of each scenario (seed 0) for `--steps` steps, the
study recipe's cosine schedule stretched, with a checkpoint every `--every` steps, and prints
at each checkpoint the mean over seeds of:

- `deploy`: the student's misbehaviour rate in real deployments (what misalignment transfer
  counts);
- `honeypot`: its rate on honeypots, where the teacher's is about 0;
- `audit`: the behaviour-agnostic auditor's success@100 on the student, the defender's
  catch (its queries are honeypot sessions: it cannot make a real one);
- `capability`: capability transfer.

A student whose `honeypot` rate is near its `deploy` rate acts in every deployment-like session
and has not learnt the tell; one with `deploy` high and `honeypot` near 0 has. `--plot` draws
the four curves, one panel per scenario and technique. The study goes under `--workdir`
(default: a temporary folder) and resumes there. Run it alone: 30 runs of 12 checkpoints
each, about 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

COLUMNS = ("deploy", "honeypot", "audit", "capability")


def curves(rows: list[dict]) -> dict:
    """(scenario, technique) -> {step: {column: mean over the runs at that step}}, with
    `runs`, how many runs each mean is of."""
    got = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        got[(r["scenario"], r["technique"])][r["step"]].append(
            (r["misbehavior"]["deploy"], r["misbehavior"]["honeypot"], r["auditor"]["success_at_k"],
             r["capability_transfer"]))
    return {key: {step: {**{c: statistics.mean(x[i] for x in xs) for i, c in enumerate(COLUMNS)}, "runs": len(xs)}
                  for step, xs in sorted(steps.items())}
            for key, steps in got.items()}


def plot(table: dict, scenarios: list[str], techniques: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"deploy": ("firebrick", "-", "misbehaviour, real deployments"),
             "honeypot": ("darkorange", "-", "misbehaviour, honeypots"),
             "audit": ("royalblue", "--", "generic auditor's success@100"),
             "capability": ("grey", ":", "capability transfer")}
    fig, axes = plt.subplots(len(scenarios), len(techniques), figsize=(3.8 * len(techniques), 2.6 * len(scenarios)),
                             sharex=True, sharey=True, squeeze=False, constrained_layout=True)
    for i, sc in enumerate(scenarios):
        for j, t in enumerate(techniques):
            ax, got = axes[i][j], table.get((sc, t), {})
            steps = sorted(got)
            for col, (colour, ls, label) in style.items():
                ax.plot(steps, [got[s][col] for s in steps], color=colour, ls=ls, lw=1.5, label=label)
            ax.set_title(f"{sc}: {t}", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i == len(scenarios) - 1:
                ax.set_xlabel("step")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle("the behaviour first acts in every deployment-like session, and later only in real ones "
                 "(means over seeds)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--techniques", nargs="+", default=["baseline", "logit_distillation"])
    ap.add_argument("--scenarios", nargs="+", default=["default", "collusion", "beacon"])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=100, help="steps between checkpoints")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--workdir", type=Path, default=None, help="where the study goes (resumed there)")
    ap.add_argument("--plot", type=Path, default=None, help="write the curves' figure here")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        raise SystemExit("learning_the_tell.py: --steps and --every must be positive, --steps a multiple of --every")

    from checkpoint_jitter import MATRIX, seed0_overrides  # this folder's: the matrix's seed-0 builds

    from doublebind.organisms.models import quiet_transformers
    from doublebind.studies.executor import workers_for
    from doublebind.studies.run import run_study

    quiet_transformers()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-tell-"))
    run_study(MATRIX, work, show_progress=True, workers=workers_for(args.workers),
              overrides=[*seed0_overrides(args.scenarios, "learning_the_tell.py"),
                         f"techniques={json.dumps(args.techniques)}", f"seeds={json.dumps(args.seeds)}",
                         f"recipe_overrides.training.steps={args.steps}",
                         f"recipe_overrides.training.checkpoint_every={args.every}"])
    with open(work / "results.jsonl") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["technique"] in args.techniques and r["scenario"] in args.scenarios
            and r["seed"] in args.seeds]
    table = curves(rows)

    print(f"\nmatrix recipe at {args.steps} steps, organism seed 0, seeds {args.seeds}: means over seeds")
    for sc in args.scenarios:
        for t in args.techniques:
            got = table.get((sc, t), {})
            print(f"\n{sc}, {t}")
            print(f"{'step':>6} " + " ".join(f"{c:>10}" for c in COLUMNS))
            for step, m in got.items():
                print(f"{step:>6} " + " ".join(f"{m[c]:>10.3f}" for c in COLUMNS))
    if args.plot:
        plot(table, args.scenarios, args.techniques, args.plot)
        print(f"wrote {args.plot}")
    print(f"study in {work}")


if __name__ == "__main__":
    main()
