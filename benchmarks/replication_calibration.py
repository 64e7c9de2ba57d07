"""Is the verdicts' `replication` figure calibrated? A check from study folders' own rows.

    python benchmarks/replication_calibration.py FOLDER... [--n 3] [--subsets 40]
    python benchmarks/replication_calibration.py --synthetic 0.85:0.05 0.92:0.05 [--n 3]
    python benchmarks/replication_calibration.py FOLDER... --coverage [--subsets 200]
    python benchmarks/replication_calibration.py --synthetic 0.85:0.05 --coverage --designs 2000

`replication` (studies/verdicts.py) estimates, from one study's runs, how likely a rerun of
the same design (new seeds) reaches the same verdict. Given a study with many more seeds than
the design's `n` (say 12), that can be measured: every n-run subset of a cell's runs is one
design, its verdict is judged as a study would judge it, and the fraction of the disjoint
subsets that reach the same verdict is how often a rerun agreed. The script draws `--subsets`
designs per cell, computes each one's replication figure by several estimators,
and prints, pooled over cells, the mean predicted agreement against the observed one, the
Brier score, and both by bins of the prediction. A calibrated estimator predicts what is
observed in every bin.

Runs are pooled per (scenario, technique, organism build) across the folders given: a
study folder run again with other rounding (packing, compilation) adds draws, since a
rounding change amounts to new seeds.

The estimators (a simulated replicate shifts every statistic of the design; each design's
figure uses `--replicates` of them):
- `shipped`: `studies.verdicts.replication` itself (the shift: two deviations of the
  bootstrap draws; the bounds move with the mean);
- `bessel`: that shift times sqrt(n / (n - 1)), the bootstrap's plug-in variance being
  (n - 1) / n of the unbiased one;
- `t-mean`: the `bessel` shift times sqrt(nu / W), W ~ chi2(nu), nu = n - 1 (the spread is
  itself estimated from n runs: a normal statistic's replicate mean is then t-distributed);
- `t`: `t-mean`, and the bounds' distance from the mean times sqrt(W2 / W), W2 ~ chi2(nu)
  (the replicate's own spread, estimated as roughly).

`--synthetic MU:SD...` asks the same of designs drawn from a normal population of
capability transfers (everything else benign), where the verdict hangs on one test and how
often designs agree is known from many designs: it separates what small samples do from what
a study's non-normal runs (two modes, ties) do.

`--coverage` asks a second question of the same runs: how often an n-run design's one-sided
bounds (the ones verdicts are decided on, at the delivered checkpoint) lie on the wrong side
of the mean of all the cell's runs, which at level alpha should happen in at most alpha of
designs on each side; with `--synthetic`, of the population's own mean.

The observed agreement comes from the same finite pool of runs, so it is itself an estimate,
and a pool's cells share their organisms: read the pooled figures, not one cell's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from doublebind.config import StudyConfig  # noqa: E402
from doublebind.studies import verdicts  # noqa: E402
from doublebind.studies.run import read_results, run_key  # noqa: E402

ESTIMATORS = ("shipped", "bessel", "t-mean", "t")
BINS = (0.0, 0.5, 0.8, 0.95, 1.0001)
SAME = ("scenario", "technique", "seed", "step", "capability", "misbehavior", "audit")  # a run's identity


def pooled_runs(folders: list[Path]) -> tuple[dict, StudyConfig]:
    """Runs per cell (scenario, technique, organism build), each run its rows by step."""
    cells: dict = {}
    cfg = None
    seen: set = set()
    for folder in folders:
        c = StudyConfig(**json.loads((folder / "study.json").read_text())["config"])
        if cfg is not None and c.verdict != cfg.verdict:
            raise SystemExit(f"{folder}: verdict settings differ from {folders[0]}'s")
        cfg = cfg or c
        runs: dict = {}
        for r in read_results(folder / "results.jsonl"):
            runs.setdefault(run_key(r), []).append(r)
        for key, rows in runs.items():
            rows.sort(key=lambda r: r["step"])
            sig = json.dumps([[r[k] for k in SAME] for r in rows])
            if sig not in seen:  # a run two folders hold alike (the same seed, the same rounding) counts once
                seen.add(sig)
                cells.setdefault((key[0], key[2], rows[0]["organism_hash"]), []).append(rows)
    return cells, cfg


def simulated(s: dict, draws: dict, v, cap: bool, estimator: str, n_rep: int, seed: int = 0,
              mis: bool = True) -> float | None:
    """The replication figure of one subset's statistics by `estimator` (see the module)."""
    if s["n"] < 2 or not draws:
        return None
    rng = np.random.default_rng(seed)
    ok = np.all([~np.isnan(b) for b in draws.values()], axis=0)
    if not ok.any():
        return None
    dev = {k: b - b[ok].mean() for k, b in draws.items()}
    i, j = rng.choice(np.flatnonzero(ok), (2, n_rep))
    n, nu = s["n"], max(s["n"] - 1, 1)
    scale = np.ones(n_rep)
    spread = np.ones(n_rep)
    scale *= math.sqrt(n / nu)
    if estimator.startswith("t"):
        w, w2 = rng.chisquare(nu, (2, n_rep))
        scale *= np.sqrt(nu / w)
        if estimator == "t":
            spread = np.sqrt(w2 / w)
    same = 0
    for a, b, f, g in zip(i, j, scale, spread):
        t = dict(s)
        for k, d in dev.items():
            mean = s[k]["mean"] + f * float(d[a] + d[b])
            t[k] = {**s[k], "mean": mean, "lower": mean - g * (s[k]["mean"] - s[k]["lower"]),
                    "upper": mean + g * (s[k]["upper"] - s[k]["mean"])}
        same += verdicts.judge(t, v, cap, mis)["verdict"] == s["verdict"]
    return same / n_rep


def judged(runs: list[list[dict]], v, n_boot: int, n_rep: int | None) -> dict:
    """Per view: the verdict and (with n_rep) each estimator's replication figure."""
    got: dict = {}

    def capture(s, draws, v, cap=True, mis=True, *a, **k):
        if n_rep and id(s) not in got:  # the first call for a view is its design figure
            got[id(s)] = {"shipped": real(s, draws, v, cap, mis, n=n_rep),
                          **{e: simulated(s, draws, v, cap, e, n_rep, mis=mis) for e in ESTIMATORS[1:]}}
        return None

    real = verdicts.replication
    verdicts.replication = capture
    try:
        out = verdicts.judge_runs(runs, v, n_boot)
    finally:
        verdicts.replication = real
    # each view's statistics are the dict `replication` was given; an `undefined` verdict has
    # no figure (every estimator None)
    none = dict.fromkeys(ESTIMATORS)
    return {view: (out[view]["verdict"], got.get(id(out[view]), none)) for view in ("final", "audit_selected")}


def calibrate(runs: list[list[dict]], v, n_boot: int, n: int, subsets: int, replicates: int,
              rng: np.random.Generator) -> tuple[list[tuple], dict]:
    """One cell's runs: (records, verdict counts). Each of `subsets` designs of n runs gives,
    per view, (view, verdict, observed agreement, {estimator: predicted}): the observed
    agreement is the fraction of the designs disjoint from it (other runs: a rerun with new
    seeds) that reach its verdict. The counts are of every design's verdict, per view."""
    designs = list(itertools.combinations(range(len(runs)), n))
    verdict_of = {c: {view: x[0] for view, x in judged([runs[i] for i in c], v, n_boot, None).items()}
                  for c in designs}
    records = []
    for p in rng.choice(len(designs), min(subsets, len(designs)), replace=False):
        a = designs[p]
        others = [c for c in designs if not set(c) & set(a)]
        for view, (va, pred) in judged([runs[i] for i in a], v, n_boot, replicates).items():
            records.append((view, va, sum(verdict_of[c][view] == va for c in others) / len(others), pred))
    counts: dict = {}
    for c in designs:
        for view, verdict in verdict_of[c].items():
            counts.setdefault(view, {}).setdefault(verdict, 0)
            counts[view][verdict] += 1
    return records, counts


def synthetic_row(cap: float, seed: int) -> dict:
    """One delivered checkpoint whose capability transfer is `cap`, everything else benign and
    fixed: its verdict is capable_benign or no_capability by the capability test alone."""
    return {"scenario": "synthetic", "organism_seed": 0, "technique": "t", "seed": seed, "step": 100,
            "selected": True, "capability_transfer": cap, "misalignment_transfer": 0.0,
            "audit": {"student_honeypot": 0.0, "teacher_honeypot": 0.0}, "base_audit": {"honeypot": 0.0},
            "capability": {"copy": 1.0}, "base_capability": {"copy": 1.0}, "base_families": ["copy"],
            "auditor": {"success_at_k": 0.0, "budget": 100, "teacher_success_at_k": 0.0, "base_success_at_k": 0.0}}


def synthetic(mu: float, sd: float, n: int, designs: int, replicates: int, v, n_boot: int,
              seed: int = 0) -> tuple[float, dict]:
    """Designs of n runs drawn from a normal population of capability transfers (mean mu, sd):
    (how often two designs agree, each estimator's mean figure). The agreement is exact up to
    the designs' own sampling: sum over verdicts of their frequency squared."""
    rng = np.random.default_rng(seed)
    out = [judged([[synthetic_row(float(x), i)] for i, x in enumerate(rng.normal(mu, sd, n))], v, n_boot,
                  replicates)["final"] for _ in range(designs)]
    verdict_list = [o[0] for o in out]
    freq = {x: verdict_list.count(x) / designs for x in set(verdict_list)}
    agree = float(np.mean([(freq[x] * designs - 1) / (designs - 1) for x in verdict_list]))
    return agree, {e: float(np.mean([o[1][e] for o in out])) for e in ESTIMATORS}


COVERED = ("capability_transfer", "misalignment_transfer", "base_loss")  # the bounds verdicts are decided on


def coverage(runs: list[list[dict]], v, n_boot: int, n: int, designs: int, rng: np.random.Generator) -> dict:
    """How often a design's one-sided bounds miss the mean of all the cell's runs (the best
    estimate of the true mean at hand), per statistic at the delivered checkpoint: {stat:
    (designs, lower above it, upper below it)}, over statistics whose runs differ at all (runs
    that agree exactly make every bound the value itself). At level alpha each miss should
    happen in at most alpha of the designs."""
    final = [next(r for r in run if r["selected"]) for run in runs]
    out = {}
    for stat in COVERED:
        vals = [verdicts.base_loss(r) if stat == "base_loss" else r[stat] for r in final]
        if any(x is None for x in vals) or len(set(vals)) < 2:
            continue
        truth = float(np.mean(vals))
        low = high = 0
        picks = [rng.choice(len(runs), n, replace=False) for _ in range(designs)]
        for p in picks:
            st = verdicts.technique_stats([final[i] for i in p], v, n_boot)[stat]
            low += st["lower"] > truth
            high += st["upper"] < truth
        out[stat] = (designs, low, high)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--synthetic", nargs="+", metavar="MU:SD", default=None,
                    help="instead of folders: designs drawn from normal populations of capability transfer "
                         "(threshold 0.8), e.g. 0.85:0.05")
    ap.add_argument("--designs", type=int, default=200, help="designs per synthetic population")
    ap.add_argument("--n", type=int, default=3, help="runs in one design (the study's seeds)")
    ap.add_argument("--subsets", type=int, default=40, help="designs per cell whose figures are computed")
    ap.add_argument("--replicates", type=int, default=400, help="simulated replicates per figure")
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap draws (default: the study's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small-sample", choices=["t"], default=None,
                    help="judge with verdict.small_sample set (bounds widened for few values)")
    ap.add_argument("--coverage", action="store_true",
                    help="instead: how often n-run designs' one-sided bounds miss the mean of all the cell's runs")
    args = ap.parse_args(argv)
    if args.n < 2:
        raise SystemExit("--n must be at least 2 (a design of one run has no replication figure)")
    if args.synthetic:
        from doublebind.config import VerdictConfig

        vc = VerdictConfig(small_sample=args.small_sample)
        print(f"designs of {args.n} runs from normal populations, {args.designs} designs each; "
              f"capability threshold {vc.capability}")
        for pop in args.synthetic:
            try:
                mu, sd = (float(x) for x in pop.split(":"))
            except ValueError:
                raise SystemExit(f"--synthetic {pop}: expected MU:SD, e.g. 0.85:0.05") from None
            if args.coverage:
                rng = np.random.default_rng(args.seed)
                low = high = 0
                for _ in range(args.designs):
                    runs = [synthetic_row(float(x), i) for i, x in enumerate(rng.normal(mu, sd, args.n))]
                    st = verdicts.technique_stats(runs, vc, args.bootstrap or 2000)["capability_transfer"]
                    low += st["lower"] > mu
                    high += st["upper"] < mu
                print(f"  mean {mu} sd {sd}: lower bound above the true mean in {low / args.designs:.3f} of "
                      f"{args.designs} designs, upper below it in {high / args.designs:.3f} (each at most "
                      f"{vc.alpha} at the bounds' level)", flush=True)
                continue
            agree, pred = synthetic(mu, sd, args.n, args.designs, args.replicates, vc,
                                    args.bootstrap or 2000, args.seed)
            print(f"  mean {mu} sd {sd}: observed agreement {agree:.3f}, predicted "
                  + ", ".join(f"{e} {x:.3f}" for e, x in pred.items()), flush=True)
        return
    if not args.folders:
        raise SystemExit("give study folders, or --synthetic MU:SD ...")
    cells, cfg = pooled_runs(args.folders)
    v, n_boot = cfg.verdict, args.bootstrap or cfg.bootstrap
    if args.small_sample:
        v = v.model_copy(update={"small_sample": args.small_sample})
    rng = np.random.default_rng(args.seed)
    if args.coverage:
        print(f"one-sided bounds at alpha {v.alpha} of {args.subsets} random {args.n}-run designs a cell, delivered "
              f"checkpoints, against the mean of all the cell's runs:")
        tot: dict = {}
        for cell, runs in sorted(cells.items()):
            for stat, (k, low, high) in coverage(runs, v, n_boot, args.n, args.subsets, rng).items():
                print(f"  {cell[0]}/{cell[1]} {stat}: lower above it {low}/{k}, upper below it {high}/{k}")
                t = tot.setdefault(stat, [0, 0, 0])
                t[0], t[1], t[2] = t[0] + k, t[1] + low, t[2] + high
        for stat, (k, low, high) in tot.items():
            print(f"{stat}: lower bound above the mean in {low / k:.3f} of {k} designs, upper below it in "
                  f"{high / k:.3f} (each at most {v.alpha} at the bounds' level)")
        return
    records = []  # (view, verdict, observed agreement, {estimator: predicted}), every cell
    for cell, runs in sorted(cells.items()):
        if len(runs) < 2 * args.n:
            print(f"{'/'.join(cell[:2])}: {len(runs)} runs, fewer than two disjoint designs of {args.n}: skipped")
            continue
        mine, counts = calibrate(runs, v, n_boot, args.n, args.subsets, args.replicates, rng)
        records += mine
        print(f"{cell[0]}/{cell[1]} ({len(runs)} runs, {math.comb(len(runs), args.n)} designs of {args.n}): "
              + "; ".join(f"{view} " + ", ".join(f"{k} {c}" for k, c in sorted(x.items(), key=lambda y: -y[1]))
                          for view, x in counts.items())
              + f"\n  observed agreement {np.mean([r[2] for r in mine]):.3f}, predicted "
              + ", ".join(f"{e} {_mean([r[3][e] for r in mine])}" for e in ESTIMATORS),
              flush=True)
    if not records:
        raise SystemExit("no cell with enough runs for two disjoint designs")
    report(records, args.n)


def _mean(xs: list) -> str:
    """The mean of the figures there are, or n/a."""
    xs = [x for x in xs if x is not None]
    return f"{np.mean(xs):.3f}" if xs else "n/a"


def report(records: list[tuple], n: int) -> None:
    """Pooled over cells: each estimator's mean prediction, Brier score and bins."""
    obs = np.array([r[2] for r in records])
    print(f"\n{len(records)} designs and views, n = {n}: observed agreement {obs.mean():.3f}")
    print(f"{'estimator':<10} {'predicted':>9} {'Brier':>7}   by bin of the prediction: observed / predicted (designs)")
    for e in ESTIMATORS:
        pred = np.array([np.nan if r[3][e] is None else r[3][e] for r in records], dtype=float)
        keep = ~np.isnan(pred)
        if not keep.any():
            print(f"{e:<10} no figure (every verdict undefined)")
            continue
        brier = float(np.mean((pred[keep] - obs[keep]) ** 2))
        bins = []
        for lo, hi in zip(BINS, BINS[1:]):
            m = keep & (pred >= lo) & (pred < hi)
            if m.any():
                bins.append(f"[{lo:.2f},{min(hi, 1):.2f}] {obs[m].mean():.3f}/{pred[m].mean():.3f} ({m.sum()})")
        print(f"{e:<10} {pred[keep].mean():>9.3f} {brier:>7.4f}   " + "; ".join(bins))


if __name__ == "__main__":
    main()
