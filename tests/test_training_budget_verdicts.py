"""benchmarks/training_budget_verdicts.py: which verdicts move between two summaries of the
same cells, and the capable_benign cells of each."""

from .test_verdicts import _benchmark


def _summary(**verdicts):
    return {"techniques": {t: {"final": {"verdict": v}} for t, v in verdicts.items()}}


def test_transitions_list_the_moved_verdicts_and_each_lengths_capable_benign_cells():
    bench = _benchmark("training_budget_verdicts")
    short = {"a": _summary(x="capable_benign", y="inconclusive", z="both_fail", w="capable_benign"),
             "b": _summary(x="no_capability")}
    long = {"a": _summary(x="both_fail", y="inconclusive", z="both_fail", w="capable_benign"),
            "b": _summary(x="capable_benign")}
    got = bench.transitions(short, long)
    assert got["a"] == {"moved": [("x", "capable_benign", "both_fail")], "same": 3,
                        "benign_400": ["w", "x"], "benign_1200": ["w"]}
    assert got["b"] == {"moved": [("x", "no_capability", "capable_benign")], "same": 0,
                        "benign_400": [], "benign_1200": ["x"]}
