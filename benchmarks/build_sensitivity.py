"""Which of a study's verdicts one organism build decides.

    python benchmarks/build_sensitivity.py docs/results/matrix [--scenario default ...]
        [--view audit_selected] [--long] [--tally]

Each scenario of several organism builds (the matrix has two per scenario) is judged on each
build alone, with its benign twin's build of the same organism seed where the study names a
twin, exactly as a study of that build alone would be (`doublebind.studies.by_build`), and
each verdict over all builds is sorted: `agree` (every build alone reaches it), `one build
decides` (the builds disagree and it is exactly one build's), `several builds` (more than one
build's but not every one's: three builds or more) or `split` (none's). A build
alone is judged on its own seeds (5 in the matrix), so builds also disagree by seed noise; a
disagreement is `firm` where every build's verdict alone replicates at 0.8 or more. The
study's own replication figure resamples the builds too, so it should mark most firm
disagreements provisional (*, below 0.8); the script counts how many it does. It prints the
counts per scenario and, with `--long`, every cell that is not `agree`, each build's verdict
with its replication figure, and with `--tally` how many of each verdict every build alone
reaches. The report of a study of several builds has the same table per
scenario. It reads committed rows only (no training); the matrix takes about a minute on one
thread.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fig(verdict: str, replication) -> str:
    return f"{verdict} ({replication:.2f})" if isinstance(replication, (int, float)) else verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", type=Path, help="a study folder (results.jsonl, study.json)")
    p.add_argument("--scenario", nargs="*", help="only these scenarios (default: every one of several builds)")
    p.add_argument("--long", action="store_true", help="list every cell that is not `agree`")
    p.add_argument("--tally", action="store_true", help="count each verdict of every build judged alone")
    p.add_argument("--view", choices=("final", "audit_selected"), default="final",
                   help="the delivered checkpoint's verdicts (final) or the audit-selected one's")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from doublebind.reports.study_report import load_study, _study_config
    from doublebind.studies import by_build as bb
    from doublebind.studies.run import study_builds

    study, scan, summary = load_study(args.study, "the comparison")
    found = bb.by_build(scan.runs, _study_config(args.study, study), summary, study_builds(study), args.scenario)
    if not found:
        print("no scenario of several organism builds to compare")
        return 1
    totals = collections.Counter()
    for sc, data in found.items():
        cells = data[args.view]
        c = bb.counts(cells)
        totals.update({k: v for k, v in c.items() if k != "decided_by"})
        who = ", ".join(f"build {b}: {n}" for b, n in c["decided_by"].items())
        print(f"{sc} (organism seeds {', '.join(map(str, data['seeds']))}): {c['verdicts']} verdicts; agree "
              f"{c['agree']}, one build decides {c['one build decides']}" + (f" ({who})" if who else "")
              + (f", several builds {c['several builds']}" if len(data["seeds"]) > 2 else "")
              + f", split {c['split']}; firm disagreements {c['firm']}, {c['firm_marked']} of them marked "
                f"provisional over all builds")
        if args.long:
            for t, x in cells.items():
                if x["kind"] == "agree":
                    continue
                print(f"    {t}: over {', '.join(map(str, data['seeds']))}: {fig(x['verdict'], x['replication'])}; "
                      + "; ".join(f"{s} alone: {fig(*v)}" for s, v in x["alone"].items())
                      + (f"  <- build {x['decided_by']}" if x["decided_by"] is not None else "")
                      + ("  firm" if x["firm"] else ""))
        if args.tally:
            for seed in data["seeds"]:
                tally = collections.Counter(x["alone"][seed][0] for x in cells.values())
                print(f"    build {seed} alone: " + ", ".join(f"{v} {n}" for v, n in sorted(tally.items())))
    several = any(len(data["seeds"]) > 2 for data in found.values())
    print(f"all: {totals['verdicts']} verdicts; agree {totals['agree']}, one build decides "
          f"{totals['one build decides']}" + (f", several builds {totals['several builds']}" if several else "")
          + f", split {totals['split']}; firm disagreements {totals['firm']} (every build "
          f"alone replicating at {bb.FIRM} or more), {totals['firm_marked']} of them marked provisional (*) over all "
          f"builds (replication below {bb.FIRM})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
