"""Where a study run's time goes: training steps, checkpoint evals and audits, reference
metrics, setting the run up, writing its files, and the runner around it.

    python benchmarks/run_profile.py [--techniques baseline verifier_filter ...] [--seeds 0] [--quick]

The default study's first scenario (its techniques x `--seeds`, organism seed 0), run by
`run_study` with one worker in this process, one torch thread, freed memory kept
(`doublebind.heap`), as a study worker runs them.
A warm-up pass (one step each) places the organism and caches every technique's teacher
outputs first, so the timed pass does what a study's runs do once the caches are warm; the
reference metrics of base and teacher are computed once per worker process, so the timed
pass starts with them forgotten, as a fresh worker would.

Each phase is timed by wrapping the method that does it (no profiler: cProfile's cost per
Python call would inflate the Python-heavy phases against the training step's kernels):

- training steps: `Distiller.train_step` (forward, backward, clipping, the optimiser);
- checkpoint evals: `Distiller.evaluate` on the student at each checkpoint (capability and
  misbehaviour, teacher-forced and sampled);
- checkpoint audits: `Auditor.audit` on the student at each checkpoint;
- reference metrics: base and teacher, evals and audits, once per worker;
- run set-up: `Distiller.__init__` (prompts, cached teacher outputs, the stages' data work,
  the student's init);
- the rest of `distill`: stage checkpoint hooks, metrics and summary files, plots;
- the runner: `run_study` outside the runs (configs, organisms' cards, the study summary).

Prints seconds and shares per phase, then per technique. Run it alone.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import QUICK, first_scenario_grid  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Seconds spent in wrapped methods, by phase, and by technique (the run's recipe name)."""

    def __init__(self):
        self.total: dict[str, float] = collections.defaultdict(float)
        self.by_run: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
        self.run = "?"

    def wrap(self, owner, name: str, phase: str, *, student_only: bool = False):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            role = kwargs.get("role", args[3] if len(args) > 3 else "student")  # (self, model, n, role)
            if student_only and role != "student":
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t
                self.total[phase] += dt
                self.by_run[self.run][phase] += dt

        setattr(owner, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--techniques", nargs="+", default=None, help="techniques (default: the study's list)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--quick", action="store_true", help="the quick study, short runs: a smoke test")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from doublebind.heap import keep_freed_memory

    keep_freed_memory()  # as the CLI and every study worker do (DOUBLEBIND_HEAP)
    import torch

    from doublebind import config
    from doublebind.audits.auditor import Auditor
    from doublebind.organisms.models import quiet_transformers
    from doublebind.studies import run as study_run
    from doublebind.training import distill as distill_mod

    quiet_transformers()
    torch.set_num_threads(1)
    study = ROOT / "configs" / "studies" / ("quick.yaml" if args.quick else "default.yaml")
    cfg = config.load(study, expect="study")
    techniques = args.techniques or list(cfg.technique_stages())
    over = [*first_scenario_grid(cfg, techniques, args.seeds), *(QUICK if args.quick else [])]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-run-profile-"))
    shutil.rmtree(work / "warm-up", ignore_errors=True)
    t0 = time.perf_counter()
    study_run.run_study(study, work / "warm-up", show_progress=False, workers=1,
                        overrides=[*(o for o in over if not o.startswith(("recipe_overrides.training.",
                                                                          "recipe_overrides.eval."))),
                                   "recipe_overrides.training.steps=1", "recipe_overrides.training.checkpoint_every=1",
                                   "recipe_overrides.eval.n_prompts=5"])
    print(f"warm-up (organism, teacher outputs): {time.perf_counter() - t0:.1f} s; "
          f"{len(techniques)} techniques x seeds {args.seeds} on {study.name}'s first scenario, one thread")
    distill_mod._REFERENCE.clear()  # as in a fresh worker

    clock = Clock()
    D = distill_mod.Distiller
    clock.wrap(D, "train_step", "training steps")
    clock.wrap(D, "reference_metrics", "reference metrics")
    clock.wrap(D, "__init__", "run set-up")
    # The student's evals and audits at checkpoints; reference_metrics' own calls belong to
    # its phase (its wrapper below takes them back out of these two).
    clock.wrap(D, "evaluate", "checkpoint evals", student_only=True)
    clock.wrap(Auditor, "audit", "checkpoint audits")
    inner_distill = distill_mod.distill

    def distill(organism_dir, recipe, out, **kw):
        clock.run = recipe.name
        t = time.perf_counter()
        try:
            return inner_distill(organism_dir, recipe, out, **kw)
        finally:
            clock.total["distill"] += time.perf_counter() - t
            clock.by_run[clock.run]["distill"] += time.perf_counter() - t

    distill_mod.distill = distill
    ref_phase = {"checkpoint evals": 0.0, "checkpoint audits": 0.0}
    inner_ref = D.reference_metrics

    def reference_metrics(self):  # evals and audits inside it belong to the reference phase
        before = {k: clock.total[k] for k in ref_phase}
        before_run = {k: clock.by_run[clock.run][k] for k in ref_phase}
        try:
            return inner_ref(self)
        finally:
            for k in ref_phase:
                clock.total[k], clock.by_run[clock.run][k] = before[k], before_run[k]

    D.reference_metrics = reference_metrics
    out = work / "timed"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(work / "warm-up" / "organisms", out / "organisms") if (work / "warm-up" / "organisms").is_dir() \
        else None
    t0 = time.perf_counter()
    study_run.run_study(study, out, show_progress=False, workers=1, overrides=over)
    wall = time.perf_counter() - t0

    def table(times: dict[str, float], whole: float, label: str) -> None:
        rest = times["distill"] - sum(times[k] for k in PHASES)
        rows = [*((k, times[k]) for k in PHASES), ("rest of the run (hooks, files, plots)", rest)]
        if label == "all runs":
            rows.append(("the runner around the runs", whole - times["distill"]))
        print(f"\n{label}: {whole:.1f} s")
        for name, s in rows:
            print(f"  {name:<40} {s:7.2f} s  {100 * s / whole:5.1f}%")

    PHASES = ["training steps", "checkpoint evals", "checkpoint audits", "reference metrics", "run set-up"]
    n_runs = len(techniques) * len(args.seeds)
    table(clock.total, wall, "all runs")
    print(f"\n{n_runs} runs in {wall:.1f} s = {60 * n_runs / wall:.2f} runs/min (one worker)")
    print("\nper technique (seconds: " + ", ".join(PHASES) + ", whole run):")
    for name, times in clock.by_run.items():
        print(f"  {name:<24} " + " ".join(f"{times[k]:6.2f}" for k in PHASES) + f"  {times['distill']:6.2f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
