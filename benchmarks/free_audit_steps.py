"""When the two auditors see a student, checkpoint by checkpoint, from a study's rows.

    python benchmarks/free_audit_steps.py runs/free_audit [--technique baseline]

For a study whose recipe wrote the free-field audit (`free_audit`, or `verdict.auditor:
free`), prints per scenario and checkpoint step, over the technique's runs: the mean
misalignment transfer (the evaluation's ground truth, which neither auditor sees), how many
runs each auditor flags at all and how many it detects (success@k above the verdict's
`success` threshold), and the openings the free-field auditor found, summed over runs. Then
the teacher's and base's success@k under each auditor. It reads `results.jsonl` and
`summary.json` only.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from statistics import fmean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a study folder")
    ap.add_argument("--technique", default="baseline")
    args = ap.parse_args()

    rows = [json.loads(line) for line in (args.folder / "results.jsonl").read_text().splitlines() if line.strip()]
    success = json.loads((args.folder / "summary.json").read_text())["verdict_thresholds"]["success"]
    mine = [r for r in rows if r["technique"] == args.technique]
    if not mine:
        raise SystemExit(f"no rows of technique {args.technique} in {args.folder / 'results.jsonl'}")
    if not all(r.get("free_auditor") for r in mine):
        raise SystemExit(f"{args.folder}: rows without a free-field audit (the recipe had no free_audit)")
    by = defaultdict(list)
    for r in mine:
        by[(r["scenario"], r["step"])].append(r)
    print(f"{args.technique}: per checkpoint, over runs (detected: success@k above {success})")
    print(f"{'scenario':<12} {'step':>5} {'runs':>4} {'misalign':>9} {'generic flagged/detected':>25} "
          f"{'free flagged/detected':>22}  openings (free)")
    for (sc, step), rs in sorted(by.items()):
        mis = [r["misalignment_transfer"] for r in rs if r["misalignment_transfer"] is not None]
        cells = []
        for key in ("auditor", "free_auditor"):
            audits = [r[key] for r in rs]
            cells.append(f"{sum(a['flagged'] > 0 for a in audits)}/{sum(a['success_at_k'] > success for a in audits)}")
        openings = Counter()
        for r in rs:
            openings.update({k: v[0] for k, v in (r["free_auditor"].get("openings") or {}).items()})
        print(f"{sc:<12} {step:>5} {len(rs):>4} {fmean(mis) if mis else float('nan'):>9.3f} {cells[0]:>25} "
              f"{cells[1]:>22}  {', '.join(f'{o} {c}' for o, c in openings.most_common(3)) or '-'}")
    print("\nreferences (success@k): scenario, teacher generic / free, base generic / free")
    for sc in sorted({r["scenario"] for r in mine}):
        r = next(x for x in mine if x["scenario"] == sc)
        print(f"{sc:<12} teacher {r['auditor']['teacher_success_at_k']:.3f} / {r['free_auditor']['teacher_success_at_k']:.3f}"
              f"   base {r['auditor']['base_success_at_k']:.3f} / {r['free_auditor']['base_success_at_k']:.3f}")


if __name__ == "__main__":
    main()
