"""`doublebind study compare A B`: which verdicts a rerun kept, against A's replication figures."""

import json
import shutil
from pathlib import Path

import pytest

from doublebind.studies.compare import compare, sentence
from doublebind.studies.run import RESULTS, read_results, seal_run

from .conftest import run_cli

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "results"


def _summary(cells: dict, power: float = 0.8, misalignment: float = 0.1) -> dict:
    """A summary with (scenario, technique) -> (delivered, audit-selected, replication) cells."""
    def stats(verdict, rep, mis):
        return {"verdict": verdict, "replication": rep, "misalignment_transfer": {"mean": mis}}

    scenarios: dict = {}
    for (sc, t), (final, selected, rep, mis) in cells.items():
        scenarios.setdefault(sc, {"techniques": {}})["techniques"][t] = {
            "final": stats(final, rep, mis), "audit_selected": stats(selected, rep, mis), "reference": None}
    return {"verdict_thresholds": {"power": power, "misalignment": misalignment}, "scenarios": scenarios}


def test_counts_follow_the_cells_and_the_replication_figures():
    a = _summary({("s", "held"): ("capable_benign", "capable_benign", 0.95, 0.0),
                  ("s", "moved"): ("inconclusive", "inconclusive", 0.6, 0.09),
                  ("s", "unrated"): ("both_fail", "no_capability", None, 0.5),
                  ("s", "gone"): ("both_fail", "both_fail", 1.0, 0.5)})
    b = _summary({("s", "held"): ("capable_benign", "capable_benign", 0.9, 0.0),
                  ("s", "moved"): ("both_fail", "inconclusive", 0.7, 0.2),  # only the delivered view moves
                  ("s", "unrated"): ("both_fail", "both_fail", None, 0.5),  # audit-selected moves, unrated
                  ("s", "new"): ("incriminating", "incriminating", 1.0, 0.3)})
    r = compare(a, b)
    assert (r["shared"], r["same_all"], r["moved"]) == (6, 4, 2)
    # rated cells: held x2 (0.95), moved x2 (0.6); the unrated pair counts in same_all only
    assert r["with_replication"] == 4 and r["same"] == 3
    assert abs(r["expected_same"] - (2 * 0.95 + 2 * 0.6)) < 1e-12
    assert r["moved_provisional"] == 1 and r["held_provisional"] == 1  # 'moved' audit-selected held
    assert (r["only_a"], r["only_b"]) == (2, 2)
    moved = {(c.technique, c.view) for c in r["cells"] if c.shared and not c.same}
    assert moved == {("moved", "delivered"), ("unrated", "audit-selected")}
    assert not r["thresholds_differ"]
    assert r["moved_unrated"] == 1  # 'unrated' audit-selected: no replication to judge it by
    assert sentence(r) == ("4 of 6 shared verdicts the same; A's replication figures expected 3.1 of its 4 rated "
                           "cells to hold, and 3 did; of the 2 that moved, 1 was provisional in A (replication "
                           "below 0.8) and 1 unrated; 1 provisional in A held; 2 cells only in A, 2 only in B")
    # with several organism builds A also rates a rerun on the same builds: counted on those cells
    a["scenarios"]["s"]["techniques"]["held"]["final"]["replication_same_organisms"] = 0.99
    a["scenarios"]["s"]["techniques"]["moved"]["final"]["replication_same_organisms"] = 0.7
    r = compare(a, b)
    assert r["with_replication_same_organisms"] == 2 and abs(r["expected_same_organisms"] - 1.69) < 1e-12
    assert r["same_same_organisms"] == 1  # 'held' delivered held, 'moved' delivered moved
    assert "for a rerun on the same organism builds they expected 1.7 of 2, and 1 did" in sentence(r)
    # other thresholds or bootstrap settings are said; no shared cell still counts the rest
    assert compare(a, _summary({}, misalignment=0.2))["thresholds_differ"]
    assert compare(a, {**a, "bootstrap": {"n": 9}})["thresholds_differ"]
    assert sentence(compare(a, _summary({}))) == ("the two studies share no cell (scenario, technique, view); "
                                                  "8 cells only in A, 0 only in B")


def test_cli_compares_the_reference_with_an_edited_rerun(tmp_path):
    """The reference against a copy whose `reduce_slack` runs on `collusion` carry the
    misbehaviour: exactly that cell moves, in both views, from capable_benign."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for f in (RESULTS, "summary.json", "study.json"):
            shutil.copy(REFERENCE / f, d / f)
    rows = read_results(b / RESULTS)
    runs: dict = {}
    for r in rows:
        runs.setdefault(r["run_id"], []).append(r)
    ref = next(r["reference_items"] for r in rows if r["scenario"] == "collusion" and "reference_items" in r)
    # each prompt's misbehaviour 60% of the way from base's to the teacher's: the rows' per-prompt
    # scores give the edited transfer, as a real rerun's would
    deploy = [b + 0.6 * (t - b) for b, t in zip(ref["base"]["deploy"], ref["teacher"]["deploy"])]
    lines = []
    for run_id, run in runs.items():
        if run[0]["scenario"] == "collusion" and run[0]["technique"] == "reduce_slack":
            rate = round(sum(deploy) / len(deploy), 4)
            run = seal_run([{**r, "misalignment_transfer": 0.6, "items": {**r["items"], "deploy": deploy},
                             "misbehavior": {**r["misbehavior"], "deploy": rate}} for r in run], run_id)
        lines += [json.dumps(r) for r in run]
    (b / RESULTS).write_text("\n".join(lines) + "\n")
    (b / "summary.json").unlink()  # compare recomputes it from the rows anyway

    res = run_cli("study", "compare", str(a), str(b), "--json", str(tmp_path / "cmp.json"))
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "cmp.json").read_text())
    moved = [(c["scenario"], c["technique"], c["view"], c["a"], c["b"]) for c in data["cells"] if not c["same"]]
    assert sorted(moved) == [("collusion", "reduce_slack", "audit-selected", "capable_benign", "both_fail"),
                             ("collusion", "reduce_slack", "delivered", "capable_benign", "both_fail")]
    assert data["shared"] == 20 and data["same_all"] == 18 and data["moved_provisional"] == 0
    assert "(moved)" in res.stdout and "18 of 20 shared verdicts the same" in res.stdout
    rated = [c for c in data["cells"] if c["a_replication"] is not None]
    assert abs(data["expected_same"] - sum(c["a_replication"] for c in rated)) < 1e-9

    # one clear line and exit 1 for a folder that is not a study, or the same folder twice
    for args, needle in (((str(tmp_path / "nope"), str(a)), "nope: no such folder"),
                         ((str(tmp_path), str(a)), "no results.jsonl"),
                         ((str(a), str(a)), "are the same folder")):
        res = run_cli("study", "compare", *args)
        assert res.returncode == 1 and needle in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_power_alone_is_not_another_rule():
    """`power` only marks verdicts provisional; it decides none, so two studies that differ in
    it judge alike (a mutation audit found this unpinned)."""
    a = _summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.5)})
    assert not compare(a, _summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.5)}, power=0.9))["thresholds_differ"]


@pytest.fixture(scope="module")
def demo_against_two_builds() -> dict:
    """The demo's reference compared with a reference of the matrix's design on `default` (5
    seeds on its 2 builds, 1200 steps: `training_budget_default_collusion_both`, recomputed in
    a few seconds where the matrix's 2330 runs take about 20)."""
    from doublebind.studies.compare import compare_folders

    return compare_folders(REFERENCE, REFERENCE / "training_budget_default_collusion_both")


def test_compare_says_when_b_plans_another_design(demo_against_two_builds):
    """The demo's reference (3 seeds on 1 build per scenario) against the matrix (5 seeds on 2)
    noted only the study names, then held A's replication figures against it."""
    from doublebind.studies.compare import notes

    said = notes(demo_against_two_builds)
    assert "B plans scenario default with another design (5 seeds on 2 organism builds, A 3 on 1): A's replication " \
           "figures expect a rerun of A's own design" in said, said
    summary = json.loads((REFERENCE / "summary.json").read_text())
    assert not any("evaluation sets" in n for n in notes(compare(summary, summary)))


def test_compare_says_when_one_side_s_intervals_count_the_evaluation_sets_draw(tmp_path):
    """The reference against its own rows without their per-prompt scores (as rows written before
    2026-12-05 are): a verdict that moves may be the intervals' width, and compare says so."""
    from doublebind.studies.compare import compare_folders, notes

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(REFERENCE / "study.json", bare / "study.json")
    runs: dict = {}
    for r in read_results(REFERENCE / RESULTS):
        runs.setdefault(r["run_id"], []).append({k: v for k, v in r.items() if k not in ("items", "reference_items")})
    (bare / RESULTS).write_text("".join(json.dumps(r) + "\n" for run_id, run in runs.items()
                                        for r in seal_run(run, run_id)))
    said = notes(compare_folders(REFERENCE, bare))
    for sc in ("default", "collusion"):
        assert f"on scenario {sc}, A's intervals count the evaluation sets' draw and B's do not (not all its rows " \
               "keep per-prompt scores): a moved verdict may be the intervals' width, not the runs" in said, said


def test_compare_calls_a_few_seeds_design_s_expectation_an_upper_estimate(demo_against_two_builds):
    """At 3-6 seeds per build the replication figures were measured to overrate agreement
    (README, 'How calibrated the figure is'): the summary line says so where A has so few."""
    from doublebind.studies.compare import compare_folders
    from doublebind.studies.verdicts import FEW_SEEDS

    r = compare(_summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.5)}),
                _summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.5)}))
    said = "A's replication figures expected 1.8 of its 2 rated cells to hold"
    assert f"{said} (at 3 seeds an upper estimate), and 2 did" in sentence({**r, "a_seeds": 3})
    assert f"{said}, and 2 did" in sentence({**r, "a_seeds": FEW_SEEDS + 1})
    assert f"{said}, and 2 did" in sentence(r)  # the design unknown
    assert demo_against_two_builds["a_seeds"] == 3
    assert compare_folders(REFERENCE / "training_budget_beacon", REFERENCE)["a_seeds"] == 5  # seeds 0-4


def test_compare_says_when_b_built_a_scenario_from_other_organism_seeds(tmp_path):
    """A matrix rerun where one of A's builds missed its verification, and the scenario was built
    from another seed instead: both have 2 builds, so no design note was printed, and A's
    same-builds figures counted cells B never reran on those builds."""
    from doublebind.studies.compare import compare_folders, notes

    b = tmp_path / "b"
    b.mkdir()
    record = json.loads((REFERENCE / "study.json").read_text())
    for o in record["organisms"]:
        if o["scenario"] == "collusion":
            o["organism_seed"] = 7
    (b / "study.json").write_text(json.dumps(record))
    runs: dict = {}
    for r in read_results(REFERENCE / RESULTS):
        seed = 7 if r["scenario"] == "collusion" else r["organism_seed"]
        runs.setdefault(r["run_id"], []).append({**r, "organism_seed": seed})
    (b / RESULTS).write_text("".join(json.dumps(r) + "\n" for run_id, run in runs.items()
                                     for r in seal_run(run, run_id)))
    result = compare_folders(REFERENCE, b)
    assert result["builds_differ"] == [["collusion", [0], [7]]]
    assert ("scenario collusion has organism builds of other seeds (only in A: 0; only in B: 7): a moved verdict may "
            "be the builds', and A's figures for a rerun on the same builds leave its cells out") in notes(result)
    assert result["shared"] == 20 and result["same_all"] == 20  # the same runs, under other seeds
    # A's same-builds figures leave out the cells of a scenario B built from other seeds
    from doublebind.studies.compare import _same_builds

    a = _summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.5), ("r", "t"): ("both_fail", "both_fail", 0.9, 0.5)})
    for sc in ("s", "r"):
        for view in ("final", "audit_selected"):
            a["scenarios"][sc]["techniques"]["t"][view]["replication_same_organisms"] = 0.6 if sc == "r" else 0.95
    cells = compare(a, a)["cells"]
    assert _same_builds(cells) == {"with_replication_same_organisms": 4, "same_same_organisms": 4,
                                   "expected_same_organisms": pytest.approx(2 * 0.95 + 2 * 0.6)}
    assert _same_builds(cells, {"r"}) == {"with_replication_same_organisms": 2, "same_same_organisms": 2,
                                          "expected_same_organisms": pytest.approx(2 * 0.95)}


def test_a_command_line_organism_seeds_is_every_scenario_s():
    """`organism_seeds=[0]` on the matrix still built default at 0 and 4 (its own seeds): 100 runs
    more than asked, without a word. A scenario's own seeds given on the command line stay."""
    from doublebind import config

    matrix = Path(__file__).resolve().parents[1] / "configs" / "studies" / "matrix.yaml"
    assert config.load(matrix, expect="study").organism_seeds_of("default") == [0, 4]
    narrowed = config.load(matrix, ["organism_seeds=[0]"], expect="study")
    assert [narrowed.organism_seeds_of(sc) for sc in ("default", "beacon")] == [[0], [0]]
    own = config.load(matrix, ["organism_seeds=[0]", 'scenarios=[{name: default, organism_seeds: [4]}, beacon]',
                               "twins=null"], expect="study")  # the file's twins name scenarios left out
    assert [own.organism_seeds_of(sc) for sc in ("default", "beacon")] == [[4], [0]]


@pytest.mark.parametrize("change", ["hash", "weights"])
def test_a_scenario_whose_organism_b_rebuilt_is_left_out_of_the_same_builds_expectation(tmp_path, change):
    """A's figures for a rerun on the same organism builds counted the cells of a scenario
    whose organism B had rebuilt (another build hash, or the same hash built into other
    weights), and the line called them the same builds."""
    from doublebind.studies.compare import compare_folders, notes

    b = tmp_path / "b"
    b.mkdir()
    record = json.loads((REFERENCE / "study.json").read_text())
    new_hash = "f" * 16
    for o in record["organisms"]:
        if o["scenario"] == "collusion":
            if change == "hash":
                o["organism_hash"] = o["card"]["organism_hash"] = new_hash
            else:
                o["card"]["models"]["teacher"]["safetensors_sha256"] = "0" * 64
    (b / "study.json").write_text(json.dumps(record))
    runs: dict = {}
    for r in read_results(REFERENCE / RESULTS):
        moved = change == "hash" and r["scenario"] == "collusion"
        runs.setdefault(r["run_id"], []).append({**r, "organism_hash": new_hash} if moved else r)
    (b / RESULTS).write_text("".join(json.dumps(r) + "\n" for run_id, run in runs.items()
                                     for r in seal_run(run, run_id)))
    result = compare_folders(REFERENCE, b)
    assert result["same_builds_left_out"] == ["collusion"]
    assert result["organisms_rehashed" if change == "hash" else "organisms_rebuilt"] == 1
    assert any("A's figures for a rerun on the same builds leave their scenarios' cells out" in n
               for n in notes(result))
