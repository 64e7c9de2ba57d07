"""Which of a study's verdicts one organism build decides.

    python benchmarks/build_sensitivity.py docs/results/matrix [--scenario default ...] [--long]

A scenario of several organism builds (the matrix has two per scenario) is judged over all of
them: a two-level bootstrap, organisms then seeds. Where the builds alone would be judged
differently, the verdict over all of them says as much about which builds were drawn as about
the technique. This judges every technique of each scenario of several builds on each build
alone (its benign twin, where the study names one, on the twin's build of the same organism
seed) and over all of them, the same way the study judges (`compute_summary`, the study's own
config, thresholds and bootstrap), and sorts each delivered verdict into:

- `agree`: every build alone reaches the verdict over all builds;
- `one build decides`: the builds alone disagree, and the verdict over all of them is that of
  exactly one build (named);
- `split`: the builds alone disagree, and the verdict over all of them is none of theirs (with
  two builds, usually `inconclusive` or `no_capability` from the wider interval).

Each build alone is judged on its own seeds only (5 in the matrix), so builds can disagree by
seed noise; a disagreement is counted `firm` where every build's verdict alone has a
replication figure of at least 0.8 (a rerun of that build's seeds would reach it again). It
prints the counts per scenario and, with `--long`, every cell that is not `agree`, each
build's verdict with its replication figure. The study's own replication figure resamples the
builds too, so it should mark most firm disagreements provisional (*, below 0.8); the script
counts how many it does. It reads committed rows only (no training); the
matrix takes about a minute on one thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRM = 0.8  # a build's verdict alone counts as firm at this replication figure or above


def judge(scan_runs: dict, record: dict, scenario: str, seeds: list[int]) -> dict:
    """The study's summary of one scenario (and its twin) over the organism seeds `seeds`."""
    from doublebind.config import StudyConfig
    from doublebind.studies.run import compute_summary

    raw = dict(record["config"])
    entries = [{"name": e} if isinstance(e, str) else dict(e) for e in raw["scenarios"]]
    twin = (raw.get("twins") or {}).get(scenario)
    keep = [{**e, "organism_seeds": seeds} for e in entries if e["name"] in (scenario, twin)]
    raw.update(scenarios=keep, twins={scenario: twin} if twin else None)
    cfg = StudyConfig.model_validate(raw)
    builds = {(e["name"], s) for e in keep for s in seeds}
    return compute_summary(scan_runs, cfg, builds)["scenarios"][scenario]["techniques"]


def classify(overall: str, alone: dict[int, str]) -> tuple[str, int | None]:
    """`agree`, `one build decides` (and which) or `split`."""
    if all(v == overall for v in alone.values()):
        return "agree", None
    same = [b for b, v in alone.items() if v == overall]
    if len(same) == 1:
        return "one build decides", same[0]
    return "split", None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", type=Path, help="a study folder (results.jsonl, study.json)")
    p.add_argument("--scenario", nargs="*", help="only these scenarios (default: every one of several builds)")
    p.add_argument("--long", action="store_true", help="list every cell that is not `agree`")
    p.add_argument("--view", choices=("final", "audit_selected"), default="final",
                   help="the delivered checkpoint's verdicts (final) or the audit-selected one's")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from doublebind.studies.run import scan_results

    record = json.loads((args.study / "study.json").read_text())
    scan = scan_results(args.study / "results.jsonl")
    scan.check()
    twins = set((record["config"].get("twins") or {}).values())
    seeds_of = collections.defaultdict(set)
    for sc, s, *_ in scan.runs:
        seeds_of[sc].add(s)
    named = [e if isinstance(e, str) else e["name"] for e in record["config"]["scenarios"]]
    scenarios = [sc for sc in named if sc not in twins and len(seeds_of.get(sc, ())) > 1
                 and (not args.scenario or sc in args.scenario)]
    if not scenarios:
        print("no scenario of several organism builds to compare")
        return 1
    totals = collections.Counter()
    for sc in scenarios:
        seeds = sorted(seeds_of[sc])
        over = judge(scan.runs, record, sc, seeds)
        alone = {s: judge(scan.runs, record, sc, [s]) for s in seeds}
        counts = collections.Counter()
        firm = flagged = 0
        deciders = collections.Counter()
        lines = []
        for t, j in over.items():
            if args.view not in j or not all(t in alone[s] and args.view in alone[s][t] for s in seeds):
                continue
            v = j[args.view]["verdict"]
            each = {s: alone[s][t][args.view]["verdict"] for s in seeds}
            kind, who = classify(v, each)
            counts[kind] += 1
            if who is not None:
                deciders[who] += 1
            reps = [alone[s][t][args.view].get("replication") for s in seeds]
            sure = all(isinstance(r, (int, float)) and r >= FIRM for r in reps)
            if kind != "agree" and sure:
                firm += 1
                r = j[args.view].get("replication")
                flagged += isinstance(r, (int, float)) and r < FIRM
            if kind != "agree":
                def fig(x):
                    r = x.get("replication")
                    return f"{x['verdict']} ({r:.2f})" if isinstance(r, (int, float)) else x["verdict"]
                lines.append(f"    {t}: over {', '.join(map(str, seeds))}: {fig(j[args.view])}; "
                             + "; ".join(f"{s} alone: {fig(alone[s][t][args.view])}" for s in seeds)
                             + (f"  <- build {who}" if who is not None else "") + ("  firm" if sure else ""))
        n = sum(counts.values())
        totals.update(counts)
        totals["firm"] += firm
        totals["flagged"] += flagged
        totals["verdicts"] += n
        who = ", ".join(f"build {b}: {c}" for b, c in sorted(deciders.items()))
        print(f"{sc} (organism seeds {', '.join(map(str, seeds))}): {n} verdicts; agree {counts['agree']}, "
              f"one build decides {counts['one build decides']}" + (f" ({who})" if who else "")
              + f", split {counts['split']}; firm disagreements {firm}, {flagged} of them marked provisional over all builds")
        if args.long:
            print("\n".join(lines))
    print(f"all: {totals['verdicts']} verdicts; agree {totals['agree']}, one build decides "
          f"{totals['one build decides']}, split {totals['split']}; firm disagreements {totals['firm']} (every build "
          f"alone replicating at {FIRM} or more), {totals['flagged']} of them marked provisional (*) over all builds "
          f"(replication below {FIRM})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
