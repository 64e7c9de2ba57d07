"""The matrix's verdicts at the study recipe's 400 steps against the same builds' at 1200 steps,
judged the same way.

    python benchmarks/training_budget_verdicts.py [--matrix docs/results/matrix]
        [--long docs/results/training_budget_default_collusion docs/results/training_budget_beacon]

The 1200-step studies (configs/studies/training_budget_*.yaml) run one organism build per
scenario (seed 0), without benign twins or matched controls. The matrix judges two builds with
twins. This recomputes the matrix's verdicts from its rows of those builds alone, of the labels
the long studies ran, with the twins and controls left out, so that the two columns differ
only in the training budget, and prints per scenario the verdicts that move and the
`capable_benign` cells at each length. It reads committed rows only (no training; seconds).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def judged_at_400(matrix: Path, long_summaries: dict[str, dict], work: Path) -> dict:
    """The matrix's summary recomputed on the rows of the long studies' scenarios, organism
    builds and labels, without twins or controls: {scenario: {label: cell}}."""
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
    kept = [e for e in raw["scenarios"] if (e if isinstance(e, str) else e["name"]) in builds]
    raw.update(scenarios=[{**({"name": e} if isinstance(e, str) else e), "organism_seeds": sorted(builds[
        e if isinstance(e, str) else e["name"]])} for e in kept], twins=None, controls="none")
    cfg = StudyConfig.model_validate(raw)
    scan = scan_results(work / "results.jsonl")
    scan.check()
    return compute_summary(scan.runs, cfg, study_builds(record))["scenarios"]


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
        long.update(json.loads((folder / "summary.json").read_text())["scenarios"])
    with tempfile.TemporaryDirectory(prefix="doublebind-budget-") as tmp:
        short = judged_at_400(args.matrix, long, Path(tmp))
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


if __name__ == "__main__":
    main()
