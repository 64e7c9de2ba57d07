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


def _rows(technique, changes, last=0.05):
    """Two checkpoints per run (steps 300, 400) of one technique on scenario "a", one run per change."""
    return [{"scenario": "a", "organism_seed": 0, "technique": technique, "seed": s, "step": step,
             "misalignment_transfer": last - (c if step == 300 else 0.0)}
            for s, c in enumerate(changes) for step in (300, 400)]


def test_the_mark_check_asks_the_reports_rule_of_the_verdicts_more_misalignment_could_move():
    bench = _benchmark("training_budget_verdicts")
    short = {"a": _summary(up="capable_benign", flat="capable_benign", lost="inconclusive", done="both_fail")}
    long = {"a": _summary(up="both_fail", flat="capable_benign", lost="no_capability", done="both_fail")}
    rows = {"a": _rows("up", [0.02] * 5) + _rows("flat", [0.0] * 5) + _rows("lost", [0.1, 0.1, 0.1, -0.1, -0.1])
            + _rows("done", [0.3] * 5, last=0.9)}
    got = {label: (marked, moved) for _, label, marked, moved in bench.mark_check(short, long, rows, 0.1, 0.05)}
    # "up": a small rise in 5 of 5 runs below the threshold (the sign test); "lost": the mean
    # rose 0.02 < 0.05, and 3 of 5 is no trend, and its move is to no_capability, not more misalignment;
    # "done" (both_fail at 400) is not a verdict more misalignment could move
    assert got == {"up": (True, True), "flat": (False, False), "lost": (False, False)}


def test_a_long_study_with_twins_is_judged_without_them_as_the_short_side_is(tmp_path):
    """The 400-step side drops the matrix's twins; a 1200-step study that ran some is judged
    without them too (its twin scenarios left out), where its summary.json sets them."""
    import json

    from doublebind.studies import run as study_run

    from .test_twins import _cfg, _grid

    bench = _benchmark("training_budget_verdicts")
    runs, cfg = _grid(), _cfg(organism_seeds=[0])
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for rows in runs.values() for r in rows))
    (tmp_path / "study.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "organisms": [
        {"scenario": sc, "organism_seed": 0} for sc in ("default", "benign", "collusion")]}))
    with_twins = study_run.compute_summary(runs, cfg)
    (tmp_path / "summary.json").write_text(json.dumps(with_twins))
    got = bench.long_summary(tmp_path)
    assert set(got) == {"default", "collusion"}
    assert got == study_run.compute_summary(runs, _cfg(organism_seeds=[0], scenarios=["default", "collusion"],
                                                       twins=None))["scenarios"]
    assert "twin" in with_twins["scenarios"]["default"]["techniques"]["baseline"]
    assert "twin" not in got["default"]["techniques"]["baseline"]
