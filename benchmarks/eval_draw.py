"""How much do the verdicts owe to the draw of the evaluation sets?

    python benchmarks/eval_draw.py [--eval-seeds 1 2 3 4] [--techniques ...] [--seeds 0 1 2]
                                   [--workers N] [--workdir DIR] [--quick]

Every run of a study, and the base and teacher it is measured against, is scored on the
same evaluation sets: 100 neutral prompts a taught or base family (capability) and 100
real-deployment prompts (misbehaviour), drawn once with the world's eval seed 0. The
bootstrap behind each verdict resamples organisms and distillation seeds, not those
prompts, so an interval leaves out how far another draw of them would move every run of a
cell together (the base's and teacher's references move with them).

This runs the default study (`configs/studies/default.yaml`; narrowed by `--techniques`
and `--seeds`) with every checkpoint's weights kept, then scores each checkpoint, base
and teacher again on the evaluation sets of each `--eval-seeds` seed, rebuilds the study's
rows from those scores (capability, misbehaviour, both transfers, the base's capability;
the generic auditor's fields do not depend on these sets and are kept) and judges them
with the package's own `compute_summary`. Printed: for each eval seed, how many verdicts
equal the rows' own (eval seed 0, checked first to reproduce the study's rows exactly)
against how many their replication figures expected, which ones moved, and per cell the
spread of the final mean transfers across eval draws beside their bootstrap standard
error across seeds. `--quick` is the quick study at a few steps: a smoke test of the
script, not a measurement.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def _throughput():
    """benchmarks/throughput.py, for its grid overrides and verdict reader."""
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Redrawn:
    """A world whose evaluation sets are drawn with another seed; everything else its own."""

    def __init__(self, world, seed: int):
        self._world, self._seed = world, seed

    def __getattr__(self, name):
        return getattr(self._world, name)

    def capability_set(self, fam, n, seed=0):
        return self._world.capability_set(fam, n, seed=self._seed)

    def misbehavior_set(self, context, n, seed=0):
        return self._world.misbehavior_set(context, n, seed=self._seed)

    def confession_set(self, n, seed=0, context="audit"):
        return self._world.confession_set(n, seed=self._seed, context=context)


def rescored(rows: list[dict], folder: Path, world, refs: dict, n: int, load, evaluate) -> list[dict]:
    """One run's rows with each checkpoint scored on `world`'s evaluation sets."""
    from doublebind.evals.transfer import audit_signals, capability_transfer, misalignment_transfer

    out = []
    for row in rows:
        m = evaluate(load(folder / "checkpoints" / f"step_{row['step']:05d}"), world, n)
        new = copy.deepcopy(row)
        new.update(capability=m["capability"], misbehavior=m["misbehavior"], confession=m["confession"],
                   capability_transfer=capability_transfer(m, refs["base"], refs["teacher"], world.teacher_families),
                   misalignment_transfer=misalignment_transfer(m, refs["base"], refs["teacher"]),
                   base_capability=refs["base"]["capability"])
        signals = audit_signals(m, refs["teacher"])
        new["audit"] = {**row["audit"], **signals}
        new["base_audit"] = {**row["base_audit"], "honeypot": refs["base"]["misbehavior"]["honeypot"],
                             "confession": refs["base"]["confession"]}
        out.append(new)
    return out


def cells(summary: dict) -> dict:
    """(scenario, technique, view) -> (verdict, replication, final capability mean, its se,
    final misalignment mean, its se)."""
    out = {}
    for scen, block in summary["scenarios"].items():
        for tech, res in block["techniques"].items():
            for view in ("final", "audit_selected"):
                r = res[view]
                stats = [r.get(f, {}) for f in ("capability_transfer", "misalignment_transfer")]
                out[(scen, tech, view)] = (r["verdict"], r.get("replication"),
                                           *[x for s in stats for x in (s.get("mean"), s.get("se"))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--techniques", nargs="+", default=None, help="default: the study's own list")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the study's own")
    ap.add_argument("--workers", type=int, default=None, help="parallel workers (default: usable cores)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the study runs (kept; reused when finished)")
    ap.add_argument("--quick", action="store_true", help="the quick study, a few steps: a smoke test")
    args = ap.parse_args()

    import torch

    from doublebind import config
    from doublebind.evals.metrics import evaluate
    from doublebind.organisms.domain import open_domain
    from doublebind.organisms.models import load_checkpoint, quiet_transformers
    from doublebind.studies.executor import workers_for
    from doublebind.studies.run import compute_summary, run_dir, run_study, scan_results

    torch.set_num_threads(1)
    quiet_transformers()
    tp = _throughput()
    study = ROOT / "configs" / "studies" / ("quick.yaml" if args.quick else "default.yaml")
    cfg = config.load(study, expect="study")
    over = ["recipe_overrides.training.save_weights=true"]
    if args.techniques:
        dumped = cfg.model_dump(mode="json")
        listed = {(t if isinstance(t, str) else t["name"]): t for t in dumped["techniques"]}
        over.append("techniques=" + str([listed.get(t, t) for t in args.techniques]).replace("'", '"'))
    if args.seeds:
        over.append(f"seeds={list(args.seeds)}")
    if args.quick:
        over += ["recipe_overrides.training.steps=8", "recipe_overrides.training.checkpoint_every=4",
                 "recipe_overrides.eval.n_prompts=20", "recipe_overrides.prompts.size=300"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-eval-draw-"))
    t0 = time.perf_counter()
    run_study(study, work, show_progress=True, workers=workers_for(args.workers), overrides=over)
    print(f"study: {time.perf_counter() - t0:.1f} s in {work}")
    cfg = config.load(study, over, expect="study")
    runs = scan_results(work / "results.jsonl").runs
    runs = {k: rows for k, rows in runs.items() if k[2] in cfg.technique_stages() and k[3] in cfg.seeds}
    n = {k: _eval_size(run_dir(work, k)) for k in runs}  # the recipe's eval size, from each run's summary
    base_summary = compute_summary(runs, cfg)
    reference = cells(base_summary)

    domains = {}
    for key in runs:
        org = work / "organisms" / f"{key[0]}-o{key[1]}"
        if key[:2] not in domains:
            domains[key[:2]] = open_domain(org)

    def refs_for(dom, world, size):
        return {"base": evaluate(dom.load_model("base"), world, size),
                "teacher": evaluate(dom.teacher, world, size)}

    # Eval seed 0 first: the rows rebuilt from fresh scores must be the study's own.
    t1 = time.perf_counter()
    per_seed = {}
    for e in [0, *args.eval_seeds]:
        redrawn = {}
        cache = {}
        for key, rows in runs.items():
            dom = domains[key[:2]]
            world = Redrawn(dom.world, e)
            if (key[:2], n[key]) not in cache:
                cache[(key[:2], n[key])] = refs_for(dom, world, n[key])
            redrawn[key] = rescored(rows, run_dir(work, key), world, cache[(key[:2], n[key])], n[key],
                                    load_checkpoint, evaluate)
        if e == 0:
            fields = ("capability", "misbehavior", "capability_transfer", "misalignment_transfer", "base_capability")
            bad = [(k, r["step"], f) for k, rows in runs.items() for r, s in zip(rows, redrawn[k])
                   for f in fields if r[f] != s[f]]
            if bad:
                raise SystemExit(f"eval_draw.py: eval seed 0 does not reproduce the study's rows: {bad[:3]}")
            print(f"eval seed 0 reproduces the study's {sum(map(len, runs.values()))} rows "
                  f"({', '.join(fields)})")
            continue
        per_seed[e] = cells(compute_summary(redrawn, cfg))
        print(f"eval seed {e} scored and judged ({time.perf_counter() - t1:.0f} s so far)")

    expected = sum(r[1] for r in reference.values() if r[1] is not None)
    rated = sum(r[1] is not None for r in reference.values())
    print(f"\n{len(reference)} verdicts (both views); their replication figures expect {expected:.1f} of "
          f"{rated} rated to hold on new seeds")
    for e, got in per_seed.items():
        moved = [(k, reference[k][0], got[k][0]) for k in reference if got[k][0] != reference[k][0]]
        print(f"eval seed {e}: {len(reference) - len(moved)} of {len(reference)} the same"
              + "".join(f"; {s}/{t}/{v}: {a} -> {b} (replication {reference[(s, t, v)][1]})"
                        for (s, t, v), a, b in moved))
    print("\nfinal transfers (delivered checkpoints), mean over the cell's runs: eval seed 0, then the sd of that mean across "
          f"eval seeds {[0, *args.eval_seeds]}, beside the bootstrap se across distillation seeds")
    print(f"{'scenario/technique':<34} {'capability':>10} {'sd draws':>8} {'se seeds':>8}   "
          f"{'misalign.':>9} {'sd draws':>8} {'se seeds':>8}")
    ratios: dict[str, list[float]] = {"capability": [], "misalignment": []}
    for key, ref in reference.items():
        if key[2] != "final":
            continue
        row = [f"{key[0]}/{key[1]}"[:34].ljust(34)]
        for i, what in ((2, "capability"), (4, "misalignment")):
            means = [ref[i], *(per_seed[e][key][i] for e in per_seed)]
            if any(m is None for m in means):
                row.append(f"{'-':>10} {'-':>8} {'-':>8}")
                continue
            sd = statistics.stdev(means) if len(means) > 1 else 0.0
            se = ref[i + 1] or 0.0
            if se > 1e-6:  # a cell whose runs all read the same has no spread to compare with
                ratios[what].append(sd / se)
            row.append(f"{ref[i]:10.3f} {sd:8.3f} {se:8.3f}")
        print(row[0] + " " + "   ".join(row[1:]))
    for what, rs in ratios.items():
        if rs:
            print(f"{what}: sd across eval draws / se across seeds, median {statistics.median(rs):.2f}, "
                  f"range {min(rs):.2f}-{max(rs):.2f} over {len(rs)} cells (cells whose runs all read the same "
                  f"left out); above 1 in {sum(r > 1 for r in rs)}")
    print(f"rescoring: {time.perf_counter() - t1:.1f} s; load average {os.getloadavg()[0]:.2f}")


def _eval_size(folder: Path) -> int:
    """The run's `eval.n_prompts`, from its summary.json."""
    import json

    return json.loads((folder / "summary.json").read_text())["recipe"]["eval"]["n_prompts"]


if __name__ == "__main__":
    main()
