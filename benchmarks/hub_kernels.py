"""What transformers' hub kernels cost a study run on the CPU, in one process.

    python benchmarks/hub_kernels.py [--preset default] [--rounds 3] [--technique baseline]

Transformers 5.2x gives every model loaded with `from_pretrained` "hub kernels" unless
USE_HUB_KERNELS says otherwise. On the CPU no hub kernel applies, but every switch between
train and eval mode re-kernelizes the model. doublebind sets USE_HUB_KERNELS=NO on import
(`doublebind/__init__.py`). This script runs one study run (the study recipe, one technique,
seed 0, one thread) with the variable at YES and at NO in alternating rounds (the order
flipped each round; before each run the eval and audit memos are put back as a first run of
another seed left them, since every timed run trains the same weights), so a machine's
drift stays out of the ratio, and prints each setting's median seconds a run, the ratio, and
whether the two settings' checkpoint rows are identical (they should be: on the CPU the
kernels only wrap the same code). The organism is built first (or taken from the cache).
Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", help="organism preset")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one run per setting")
    ap.add_argument("--technique", default="baseline", help="the run's technique (baseline: the recipe alone)")
    ap.add_argument("--recipe", type=Path, default=Path(__file__).parents[1] / "configs/recipes/study.yaml")
    args = ap.parse_args()

    import torch

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.studies.run import run_recipe
    from doublebind.training.distill import distill

    torch.set_num_threads(1)
    quiet_transformers()
    stages = [] if args.technique == "baseline" else [{"name": args.technique}]
    recipe = run_recipe(config.load(args.recipe, expect="recipe"), args.technique, stages, 0)
    times: dict[str, list[float]] = {"YES": [], "NO": []}
    rows: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        org = Path(tmp) / "organism"
        with one_thread():  # as `organism build` and a study build: one hash, one set of weights
            build_organism(config.load(preset=args.preset, expect="organism"), org, show_progress=False)
        # a first run of another seed: the teacher outputs cached, and the memos then hold what a
        # study worker keeps from run to run (teacher and base evals, the auditor's references)
        warm = run_recipe(config.load(args.recipe, expect="recipe"), args.technique, stages, 99)
        distill(org, warm, Path(tmp) / "warm", show_progress=False, force=True, plot=False)
        kept = snapshot()
        for r in range(args.rounds):
            for setting in (("YES", "NO") if r % 2 == 0 else ("NO", "YES")):
                os.environ["USE_HUB_KERNELS"] = setting  # read by every from_pretrained
                restore(kept)  # each run evaluates its own checkpoints, as a study worker's next run does
                out = Path(tmp) / f"{setting}-{r}"
                t = time.perf_counter()
                distill(org, recipe, out, show_progress=False, force=True, plot=False)
                times[setting].append(time.perf_counter() - t)
                got = [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "wall_s")}
                       for x in (out / "metrics.jsonl").read_text().splitlines()]
                rows.setdefault(setting, got)
                print(f"round {r} USE_HUB_KERNELS={setting}: {times[setting][-1]:.2f} s", flush=True)
    yes, no = statistics.median(times["YES"]), statistics.median(times["NO"])
    print(f"median s/run: hub kernels on {yes:.2f}, off {no:.2f}; off is {yes / no:.3f}x as fast")
    print(f"checkpoint rows identical: {rows['YES'] == rows['NO']}")


def snapshot() -> tuple:
    """The process's memos of eval and audit answers, as they stand."""
    from doublebind.organisms import domain

    return (dict(domain._EVALS.entries), {k: dict(a._answers.entries) for k, a in domain._AUDITORS.items()})


def restore(kept: tuple) -> None:
    """Put the memos back as `snapshot` found them. Every timed run trains the same weights,
    so without this each run after the first would take its checkpoints' answers from
    memory."""
    from doublebind.organisms import domain

    evals, answers = kept
    domain._EVALS.entries.clear()
    domain._EVALS.entries.update(evals)
    for k, a in domain._AUDITORS.items():
        a._answers.entries.clear()
        a._answers.entries.update(answers.get(k, {}))


if __name__ == "__main__":
    main()
