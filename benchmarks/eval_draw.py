"""How much do the verdicts owe to the draw of the evaluation sets?

    python benchmarks/eval_draw.py [--eval-seeds 1 2 3 4] [--techniques ...] [--seeds 0 1 2]
                                   [--workers N] [--workdir DIR] [--quick]

Every run of a study, and the base and teacher it is measured against, is scored on the
same evaluation sets: 100 neutral prompts a taught or base family (capability) and 100
real-deployment prompts (misbehaviour), drawn once with the world's eval seed 0. Another draw
of them moves every run of a cell together, and the base's and teacher's references with
them. A study's bootstrap now redraws those prompts as well as organisms and distillation
seeds (where the rows keep each prompt's score); this measures real redraws against it.

This runs the default study (`configs/studies/default.yaml`; narrowed by `--techniques`
and `--seeds`) with every checkpoint's weights kept, then scores each checkpoint, base
and teacher again on the evaluation sets of each `--eval-seeds` seed, rebuilds the study's
rows from those scores (capability, misbehaviour, both transfers, the base's capability;
the generic auditor's fields do not depend on these sets and are kept) and judges them
with the package's own `compute_summary`. Printed: for each eval seed, how many verdicts
equal the rows' own (eval seed 0, checked first to reproduce the study's rows exactly)
against how many their replication figures expected, which ones moved, and per cell the
spread of the final mean transfers across eval draws beside what the bootstrap predicts
for it from eval seed 0's per-prompt scores (the study's rows keep them, and its intervals
redraw them: `studies.verdicts.EvalDraws`), the bootstrap standard error across seeds
alone, and the one the study reports, seeds and prompts both redrawn. `--quick` is the quick study at a few steps: a smoke test of the
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
    """One run's rows with each checkpoint scored on `world`'s evaluation sets, each
    prompt's score kept as a study keeps it (`items`, the reference's on the first row)."""
    from doublebind.evals.transfer import audit_signals, capability_transfer, misalignment_transfer

    out = []
    for row in rows:
        m, items = evaluate(load(folder / "checkpoints" / f"step_{row['step']:05d}"), world, n)
        new = copy.deepcopy(row)
        new["items"] = items
        if "reference_items" in row:
            new["reference_items"] = refs["items"]
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
    from doublebind.eval_items import evaluate, reference_items, world_sets
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
    reference = cells(base_summary)  # the intervals as a study now gives them: seeds and prompts redrawn
    seeds_only = cells(compute_summary({k: [{f: v for f, v in r.items() if f not in ("items", "reference_items")}
                                            for r in rows] for k, rows in runs.items()}, cfg))
    prompts_only = _prompt_spread(runs, cfg.bootstrap)

    domains = {}
    for key in runs:
        org = work / "organisms" / f"{key[0]}-o{key[1]}"
        if key[:2] not in domains:
            domains[key[:2]] = open_domain(org)

    def refs_for(dom, world, size):
        (base, base_items), (teacher, teacher_items) = (evaluate(dom.load_model("base"), world, size),
                                                        evaluate(dom.teacher, world, size))
        return {"base": base, "teacher": teacher,
                "items": reference_items(world_sets(world, size), base_items, teacher_items,
                                         world.teacher_families)}

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
            fields = ("capability", "misbehavior", "capability_transfer", "misalignment_transfer", "base_capability",
                      "items")
            bad = [(k, r["step"], f) for k, rows in runs.items() for r, s in zip(rows, redrawn[k])
                   for f in (*fields, "reference_items") if r.get(f) != s.get(f)]
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
    print("\nfinal transfers (delivered checkpoints), mean over the cell's runs at eval seed 0; 'draws': the sd of "
          f"that mean across eval seeds {[0, *args.eval_seeds]}; 'prompts': the sd the bootstrap's redrawing of eval "
          "seed 0's prompts predicts for it (runs fixed); 'seeds': the bootstrap se over seeds alone; 'both': the se "
          "a study now reports (seeds and prompts redrawn)")
    head = f"{'mean':>7} {'draws':>6} {'prompts':>7} {'seeds':>6} {'both':>6}"
    print(f"{'scenario/technique':<34} capability: {head}   misalignment: {head}")
    ratios: dict[str, list[float]] = {"draws/seeds": [], "draws/prompts": [], "both/seeds": []}
    for key, ref in reference.items():
        if key[2] != "final":
            continue
        row = [f"{key[0]}/{key[1]}"[:34].ljust(34)]
        for i, what in ((2, "capability_transfer"), (4, "misalignment_transfer")):
            means = [ref[i], *(per_seed[e][key][i] for e in per_seed)]
            if any(m is None for m in means):
                row.append(" " * 12 + f"{'-':>7} {'-':>6} {'-':>7} {'-':>6} {'-':>6}")
                continue
            sd = statistics.stdev(means) if len(means) > 1 else 0.0
            pr, se, both = prompts_only.get((key[0], key[1], what)), seeds_only[key][i + 1] or 0.0, ref[i + 1] or 0.0
            if what == "capability_transfer":
                if se > 1e-6:  # a cell whose runs all read the same has no spread to compare with
                    ratios["draws/seeds"].append(sd / se)
                    ratios["both/seeds"].append(both / se)
                if pr:
                    ratios["draws/prompts"].append(sd / pr)
            row.append(" " * 12 + f"{ref[i]:7.3f} {sd:6.3f} {pr if pr is not None else float('nan'):7.3f} "
                       f"{se:6.3f} {both:6.3f}")
        print(row[0] + "   ".join(row[1:]))
    for what, rs in ratios.items():
        if rs:
            print(f"capability, {what}: median {statistics.median(rs):.2f}, range {min(rs):.2f}-{max(rs):.2f} over "
                  f"{len(rs)} cells; above 1 in {sum(r > 1 for r in rs)}")
    print(f"rescoring: {time.perf_counter() - t1:.1f} s; load average {os.getloadavg()[0]:.2f}")


def _prompt_spread(runs: dict, n_boot: int) -> dict:
    """(scenario, technique, field) -> the sd, over the bootstrap's redrawn evaluation sets, of
    the mean of the cell's delivered transfers (its runs held fixed): what the intervals now
    add for the prompts, to set beside the spread that real redraws show."""
    from doublebind.studies.verdicts import EvalDraws, final_row

    out = {}
    for scenario in {k[0] for k in runs}:
        mine = {k: rows for k, rows in runs.items() if k[0] == scenario}
        draws = EvalDraws.of([r for rows in mine.values() for r in rows], n_boot)
        if draws is None:
            continue
        for tech in {k[2] for k in mine}:
            finals = [final_row(rows) for k, rows in mine.items() if k[2] == tech]
            for field in ("capability_transfer", "misalignment_transfer"):
                out[(scenario, tech, field)] = draws.spread(finals, field)
    return out


def _eval_size(folder: Path) -> int:
    """The run's `eval.n_prompts`, from its summary.json."""
    import json

    return json.loads((folder / "summary.json").read_text())["recipe"]["eval"]["n_prompts"]


if __name__ == "__main__":
    main()
