"""benchmarks/build_sensitivity.py: each organism build of a scenario judged alone, and how
the verdict over all of them relates to theirs."""

import json
from pathlib import Path

from .test_verdicts import _benchmark

REFS = Path(__file__).resolve().parent.parent / "docs" / "results"


def test_a_verdict_is_agreed_decided_by_one_build_or_split():
    bench = _benchmark("build_sensitivity")
    assert bench.classify("both_fail", {0: "both_fail", 4: "both_fail"}) == ("agree", None)
    assert bench.classify("no_capability", {0: "both_fail", 4: "no_capability"}) == ("one build decides", 4)
    assert bench.classify("inconclusive", {0: "both_fail", 1: "capable_benign"}) == ("split", None)
    # three builds, two of them reaching the verdict over all: not one build's
    assert bench.classify("both_fail", {0: "both_fail", 4: "both_fail", 5: "no_capability"}) == ("split", None)


def test_one_build_judged_alone_is_the_one_build_study_of_the_same_runs():
    """training_budget_default_collusion_both was resumed from a copy of
    training_budget_default_collusion (organism seed 0 only): judging its collusion rows of
    build 0 alone must give that study's committed summary, figure for figure."""
    from doublebind.studies.run import scan_results

    bench = _benchmark("build_sensitivity")
    both = REFS / "training_budget_default_collusion_both"
    scan = scan_results(both / "results.jsonl")
    got = bench.judge(scan.runs, json.loads((both / "study.json").read_text()), "collusion", [0])
    one = json.loads((REFS / "training_budget_default_collusion" / "summary.json").read_text())
    want = one["scenarios"]["collusion"]["techniques"]
    assert set(got) == set(want) and len(want) == 23
    for t in want:
        for view in ("final", "audit_selected", "reference"):
            assert got[t][view] == want[t][view], (t, view)
