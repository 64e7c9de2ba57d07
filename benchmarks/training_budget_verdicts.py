"""The matrix's verdicts at the study recipe's 400 steps against the same builds' at 1200 steps,
judged the same way.

    python benchmarks/training_budget_verdicts.py [--matrix docs/results/matrix]
        [--long docs/results/training_budget_default_collusion docs/results/training_budget_beacon]

The 1200-step studies (configs/studies/training_budget_*.yaml) run one organism build per
scenario (seed 0), without benign twins or matched controls; the `*_both` references add the
matrix's second builds (`--long docs/results/training_budget_default_collusion_both
docs/results/training_budget_beacon_both`: every verdict over the matrix's two builds). The matrix judges two builds with
twins. This recomputes the matrix's verdicts from its rows of those builds alone, of the labels
the long studies ran, with the twins and controls left out (and a long study's own verdicts
without its twins, where it ran some), so that the two columns differ only in the training
budget, and prints per scenario the verdicts that move and the
`capable_benign` cells at each length; then, for the verdicts more misalignment could move,
whether the report's ↑ (still rising) mark at 400 steps flagged those that moved to
`both_fail` or `inconclusive` at 1200. It reads committed rows only (no training; seconds).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def judged_at_400(matrix: Path, long_summaries: dict[str, dict], work: Path) -> tuple[dict, dict]:
    """The matrix's summary recomputed on the rows of the long studies' scenarios, organism
    builds and labels, without twins or controls, and those rows by scenario."""
    from doublebind.config import StudyConfig
    from doublebind.studies.run import compute_summary, scan_results, study_builds

    builds = {sc: {int(s) for s in cell["organisms"]} for sc, cell in long_summaries.items()}
    labels = {sc: set(cell["techniques"]) for sc, cell in long_summaries.items()}
    work.mkdir(parents=True, exist_ok=True)
    with open(matrix / "results.jsonl") as f, open(work / "results.jsonl", "w") as g:
        for line in f:
            r = json.loads(line)
            if r["organism_seed"] in builds.get(r["scenario"], ()) and r["technique"] in labels[r["scenario"]]:
                g.write(line)
    record = json.loads((matrix / "study.json").read_text())  # its config, as the matrix ran it
    raw = dict(record["config"])
    entries = [{"name": e} if isinstance(e, str) else e for e in raw["scenarios"]]
    raw.update(scenarios=[{**e, "organism_seeds": sorted(builds[e["name"]])} for e in entries if e["name"] in builds],
               twins=None, controls="none")
    cfg = StudyConfig.model_validate(raw)
    scan = scan_results(work / "results.jsonl")
    scan.check()
    rows = collections.defaultdict(list)
    for run in scan.runs.values():
        for r in run:
            rows[r["scenario"]].append(r)
    return compute_summary(scan.runs, cfg, study_builds(record)), rows


def long_summary(folder: Path) -> dict:
    """A long study's scenarios as its summary.json judges them; a study that pairs them with
    benign twins is judged again without them (the twins left out), as the 400-step side is."""
    record = json.loads((folder / "study.json").read_text())
    twins = set((record["config"].get("twins") or {}).values())
    if not twins:
        return json.loads((folder / "summary.json").read_text())["scenarios"]
    from doublebind.config import StudyConfig
    from doublebind.studies.run import compute_summary, scan_results, study_builds

    raw = dict(record["config"])
    entries = [{"name": e} if isinstance(e, str) else e for e in raw["scenarios"]]
    raw.update(scenarios=[e for e in entries if e["name"] not in twins], twins=None)
    scan = scan_results(folder / "results.jsonl")
    scan.check()
    return compute_summary(scan.runs, StudyConfig.model_validate(raw), study_builds(record))["scenarios"]


# 1200-step verdicts reached through more misalignment (the ↑ mark's prediction)
MISALIGNED = ("both_fail", "inconclusive")


def mark_check(short: dict, long: dict, rows: dict, threshold: float, alpha: float) -> list[tuple]:
    """For every cell whose 400-step verdict more misalignment could move (the report's
    RISE_CAN_MOVE): (scenario, label, marked ↑ at 400 steps, moved at 1200 steps to a verdict of
    more misalignment, `MISALIGNED`)."""
    from doublebind.reports.study_report import RISE_CAN_MOVE, last_interval, still_rising

    out = []
    for sc, cell in long.items():
        for label, c in cell["techniques"].items():
            a, b = short[sc]["techniques"][label]["final"]["verdict"], c["final"]["verdict"]
            if a in RISE_CAN_MOVE:
                out.append((sc, label, still_rising(last_interval(rows[sc], label), threshold, alpha),
                            b != a and b in MISALIGNED))
    return out


def transitions(short: dict, long: dict) -> dict:
    """{scenario: {"moved": [(label, verdict at 400, verdict at 1200)], "same": n,
    "benign_400": [...], "benign_1200": [...]}} from two {scenario: {"techniques": ...}}."""
    out = {}
    for sc, cell in long.items():
        moved, same = [], 0
        for label, c in cell["techniques"].items():
            a, b = short[sc]["techniques"][label]["final"]["verdict"], c["final"]["verdict"]
            if a == b:
                same += 1
            else:
                moved.append((label, a, b))
        benign = {w: sorted(t for t, c in d[sc]["techniques"].items() if c["final"]["verdict"] == "capable_benign")
                  for w, d in (("benign_400", short), ("benign_1200", long))}
        out[sc] = {"moved": moved, "same": same, **benign}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matrix", type=Path, default=ROOT / "docs" / "results" / "matrix")
    ap.add_argument("--long", type=Path, nargs="+", default=[ROOT / "docs" / "results" / "training_budget_default_collusion",
                                                            ROOT / "docs" / "results" / "training_budget_beacon"])
    args = ap.parse_args()
    long = {}
    for folder in args.long:
        long.update(long_summary(folder))
    with tempfile.TemporaryDirectory(prefix="doublebind-budget-") as tmp:
        summary, rows = judged_at_400(args.matrix, long, Path(tmp))
    short, thr = summary["scenarios"], summary["verdict_thresholds"]
    got = transitions(short, long)
    counts = collections.Counter()
    for sc, t in got.items():
        n = t["same"] + len(t["moved"])
        counts["cells"] += n
        counts["moved"] += len(t["moved"])
        print(f"\n{sc} (organism seeds {sorted(int(s) for s in long[sc]['organisms'])}): {len(t['moved'])} of {n} verdicts move, 400 -> 1200 steps")
        for label, a, b in t["moved"]:
            print(f"  {label:28s} {a:>15} -> {b}")
        print(f"  capable_benign at  400: {', '.join(t['benign_400']) or 'none'}")
        print(f"  capable_benign at 1200: {', '.join(t['benign_1200']) or 'none'}")
    print(f"\n{counts['moved']} of {counts['cells']} verdicts move")
    checked = mark_check(short, long, rows, thr["misalignment"], thr.get("alpha", 0.05))
    tally = collections.Counter((marked, moved) for *_, marked, moved in checked)
    print(f"\nthe report's ↑ (still rising) at 400 steps, on the {len(checked)} verdicts more misalignment could move:")
    print(f"  marked and moved to {' or '.join(MISALIGNED)} at 1200: {tally[(True, True)]}")
    print(f"  not marked and moved: {tally[(False, True)]}  "
          f"({', '.join(f'{sc} {t}' for sc, t, m, v in checked if v and not m) or 'none'})")
    print(f"  marked and not moved: {tally[(True, False)]}  "
          f"({', '.join(f'{sc} {t}' for sc, t, m, v in checked if m and not v) or 'none'})")
    print(f"  neither: {tally[(False, False)]}")


if __name__ == "__main__":
    main()
