"""How much does the audit-selected view gain from ranking checkpoints by the capability it
then reports? A bound from a study folder's own rows, with no new runs.

    python benchmarks/selection_bias.py [FOLDER ...]   (default: docs/results docs/results/matrix)

The audit-selected rule (`studies/verdicts.py`) picks, in each run, the most capable
checkpoint that passes the generic audit, and then judges the run on that checkpoint's
capability, measured on the same evaluation sample that ranked it. Picking the largest of
several noisy figures reads high: the bias is a selection on noise.

A rule that cannot select on capability noise picks the latest checkpoint that passes the
audit (the audit is run on its own query pool, not on the capability sample). This script
judges every technique both ways, from the same rows, and prints:

- how many runs the two rules pick different checkpoints in;
- in those runs, how much higher the most-capable pick's capability transfer reads;
- the mean capability transfer over all runs under each rule;
- the audit-selected verdicts that differ between the two rules.

The latest-clean figure is unbiased; the gap between the two rules is not the bias itself:
it is the bias plus the true difference between the checkpoints the two rules pick, which is
negative where capability still rises (there the gap understates the bias). Measuring the
bias needs each picked checkpoint scored again on a fresh sample. What the script does show
is whether any verdict hangs on ranking by capability.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import fmean, median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from doublebind.config import StudyConfig  # noqa: E402
from doublebind.studies.run import read_results, run_key  # noqa: E402
from doublebind.studies.verdicts import audit_selected, passes_audit, technique_stats  # noqa: E402


def latest_clean(rows: list[dict], v) -> dict:
    """The latest checkpoint that passes the audit; the delivered one when none does."""
    clean = [r for r in rows if passes_audit(r, v)]
    return clean[-1] if clean else next(r for r in rows if r["selected"])


def study(folder: Path) -> dict:
    cfg = StudyConfig(**json.loads((folder / "study.json").read_text())["config"])
    runs: dict = {}
    for r in read_results(folder / "results.jsonl"):
        runs.setdefault(run_key(r), []).append(r)
    v, cells, gaps, picked = cfg.verdict, {}, [], {"most capable": [], "latest clean": []}
    for key, rows in sorted(runs.items()):
        rows.sort(key=lambda r: r["step"])
        a, b = audit_selected(rows, v)[0], latest_clean(rows, v)
        picked["most capable"].append(a["capability_transfer"])
        picked["latest clean"].append(b["capability_transfer"])
        if a is not b:
            gaps.append((a["capability_transfer"] or 0.0) - (b["capability_transfer"] or 0.0))
        cells.setdefault((rows[0]["scenario"], rows[0]["technique"]), ([], []))
        cells[rows[0]["scenario"], rows[0]["technique"]][0].append(a)
        cells[rows[0]["scenario"], rows[0]["technique"]][1].append(b)
    moved = []
    for (sc, t), (a, b) in sorted(cells.items()):
        va, vb = (technique_stats(x, v, cfg.bootstrap)["verdict"] for x in (a, b))
        if va != vb:
            moved.append(f"{sc}/{t}: {va} -> {vb}")
    return {"runs": len(runs), "differ": len(gaps), "gaps": gaps, "cells": len(cells), "moved": moved,
            "mean": {k: fmean(x for x in xs if x is not None) for k, xs in picked.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path,
                    default=[ROOT / "docs" / "results", ROOT / "docs" / "results" / "matrix"])
    args = ap.parse_args(argv)
    for folder in args.folders:
        s = study(folder)
        print(f"{folder}: {s['runs']} runs; the two rules pick different checkpoints in {s['differ']}")
        if s["gaps"]:
            g = s["gaps"]
            print(f"  there the most-capable pick reads higher by: mean {fmean(g):.4f}, median {median(g):.4f}, "
                  f"largest {max(g):.4f}, smallest {min(g):.4f}")
        print("  mean capability transfer over all runs: "
              + ", ".join(f"{k} {m:.4f}" for k, m in s["mean"].items())
              + f" (difference {s['mean']['most capable'] - s['mean']['latest clean']:.4f})")
        print(f"  audit-selected verdicts that differ: {len(s['moved'])} of {s['cells']}"
              + "".join(f"\n    {m}" for m in s["moved"]))


if __name__ == "__main__":
    main()
