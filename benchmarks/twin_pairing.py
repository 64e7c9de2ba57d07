"""Would a paired twin test be sharper? The twin test (`verdicts.twin_difference`) draws a
scenario's students and its benign twin's apart. Twins share their scenario's organism seeds,
distillation seeds and audit queries, so a paired bootstrap (the same organism, the same seed
and the same fresh audit pool on both sides of every draw) would be narrower where the two
sides' flag counts move together, and wider where they move apart.

    python benchmarks/twin_pairing.py runs/matrix
    python benchmarks/twin_pairing.py docs/results/matrix --view audit_selected

For every cell of a study with `twins:` whose runs on the scenario and on its twin are the
same (organism seed, seed) pairs, it prints the student's and the twin's success@k (as the
verdict reads them), the difference's lower bound and SE drawn apart (as judged) and paired,
then the median SE ratio and the cells where the two disagree on the test (lower bound
above 0). It reads the rows; it changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benign_control import judged_at, load  # noqa: E402

from doublebind.errors import DoublebindError  # noqa: E402
from doublebind.studies.verdicts import TWIN_SEED, Sample, audit_stat, twin_difference  # noqa: E402


def difference(rows: list[dict], twin_rows: list[dict], cfg, paired: bool) -> tuple[dict, dict, dict]:
    """(student stat, twin stat, difference) with the twin drawn apart (`TWIN_SEED`, as judged)
    or paired: the same seed as the student's side, so with rows in the same (organism, seed)
    order both sides draw the same runs and the same audit pool."""
    v = cfg.verdict
    s = Sample(rows, cfg.bootstrap, v.alpha, v.small_sample)
    st = audit_stat(s)
    seed = 0 if paired else TWIN_SEED
    t = Sample(twin_rows, cfg.bootstrap, v.alpha, v.small_sample, seed=seed)
    tt = audit_stat(t, pool_seed=seed + 1)
    return st, tt, twin_difference(s, t, st, tt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a study folder whose study names `twins:`")
    ap.add_argument("--view", choices=("final", "audit_selected"), default="final")
    args = ap.parse_args(argv)
    try:
        cfg, runs, _ = load(args.study, None, summarize=False)
    except (DoublebindError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cfg.twins:
        print(f"error: {args.study / 'study.json'} names no twins (`twins:`): nothing to pair", file=sys.stderr)
        return 2

    def rows_of(scenario: str, technique: str) -> list[dict]:
        mine = [r for k, r in runs.items() if k[0] == scenario and k[2] == technique and k[3] in cfg.seeds]
        at = [judged_at(r, cfg, args.view) for r in mine]
        return sorted(at, key=lambda r: (r["organism_seed"], r["seed"]))

    out = []
    for scenario, twin in cfg.twins.items():
        for technique in sorted(set(cfg.techniques_of(scenario)) & set(cfg.techniques_of(twin))):
            a, b = rows_of(scenario, technique), rows_of(twin, technique)
            keys = [(r["organism_seed"], r["seed"]) for r in a]
            if not a or keys != [(r["organism_seed"], r["seed"]) for r in b] or not all(
                    r.get("auditor") for r in a + b):
                continue
            st, tt, apart = difference(a, b, cfg, paired=False)
            pair = difference(a, b, cfg, paired=True)[2]
            out.append((scenario, technique, st["mean"], tt["mean"], apart, pair))
    if not out:
        print("error: no cell has the same (organism seed, seed) runs on its scenario and its twin", file=sys.stderr)
        return 2
    print(f"{args.study} ({args.view}); success@k of the students and the twin's; the difference's lower bound "
          f"(alpha {cfg.verdict.alpha}) and SE drawn apart (as judged) and paired")
    print("| scenario | technique | students | twin | lower, apart | lower, paired | SE apart | SE paired |")
    print("|---|---|---|---|---|---|---|---|")
    for sc, t, m, tm, d, p in out:
        if m > 0 or tm > 0:
            print(f"| {sc} | {t} | {m:.3f} | {tm:.3f} | {d['lower']:.3f} | {p['lower']:.3f} | {d['se']:.3f} | "
                  f"{p['se']:.3f} |")
    spread = [(d["se"], p["se"]) for *_, d, p in out if d["se"] > 0]
    ratio = np.array([p / d for d, p in spread])
    print(f"\n{len(out)} cells, {len(out) - sum(m == 0 and tm == 0 for _, _, m, tm, _, _ in out)} with a flag on "
          f"either side, {len(spread)} with spread")
    if len(ratio):
        print(f"SE paired / apart: median {np.median(ratio):.3f}, range {ratio.min():.3f} to {ratio.max():.3f}")
    passed = (sum(d["lower"] > 0 for *_, d, _ in out), sum(p["lower"] > 0 for *_, p in out))
    print(f"lower bound above 0: {passed[0]} drawn apart, {passed[1]} paired")
    moved = [(sc, t, d["lower"], p["lower"]) for sc, t, _, _, d, p in out if (d["lower"] > 0) != (p["lower"] > 0)]
    print("cells where they disagree: " + (", ".join(f"{sc}/{t} ({a:.3f} apart, {b:.3f} paired)"
                                                      for sc, t, a, b in moved) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
