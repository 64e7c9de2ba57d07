"""Each organism build of a scenario judged alone (`studies.by_build`, the report's table of
them and benchmarks/build_sensitivity.py), and how the verdict over all builds relates to
theirs."""

import collections
import json
from pathlib import Path

from doublebind.reports.study_report import _study_config, load_study, write_report
from doublebind.studies import by_build as bb
from doublebind.studies.run import RESULTS, read_results, scan_results, seal_run, study_builds, summarize

from .test_report import _make_study
from .test_verdicts import _benchmark

REFS = Path(__file__).resolve().parent.parent / "docs" / "results"


def test_a_verdict_is_agreed_decided_by_one_build_several_or_split():
    assert bb.classify("both_fail", {0: "both_fail", 4: "both_fail"}) == ("agree", None)
    assert bb.classify("no_capability", {0: "both_fail", 4: "no_capability"}) == ("one build decides", 4)
    assert bb.classify("inconclusive", {0: "both_fail", 1: "capable_benign"}) == ("split", None)
    # three builds, two of them reaching the verdict over all: several builds', not one's nor none's
    assert bb.classify("both_fail", {0: "both_fail", 4: "both_fail", 5: "no_capability"}) == ("several builds", None)
    assert bb.classify("both_fail", {0: "no_capability", 4: "inconclusive", 5: "no_capability"}) == ("split", None)


def test_one_build_judged_alone_is_the_one_build_study_of_the_same_runs(tmp_path):
    """training_budget_default_collusion_both was resumed from a copy of
    training_budget_default_collusion (organism seed 0 only, no twins), then given the twins:
    judging its collusion rows of build 0 alone without the twin must give that study's
    committed summary, figure for figure; with it, what a folder of build 0's rows and its
    twin's build 0 alone gives."""
    both = REFS / "training_budget_default_collusion_both"
    study = json.loads((both / "study.json").read_text())
    scan = scan_results(both / RESULTS)
    cfg = _study_config(both, study)
    assert cfg.twins == {"default": "benign", "collusion": "benign_collusion"}
    got = bb.alone(scan.runs, cfg.model_copy(update={"twins": {}}), "collusion", 0, study_builds(study))
    one = json.loads((REFS / "training_budget_default_collusion" / "summary.json").read_text())
    want = one["scenarios"]["collusion"]["techniques"]
    assert set(got) == set(want) and len(want) == 23
    for t in want:
        for view in ("final", "audit_selected", "reference"):
            assert got[t][view] == want[t][view], (t, view)
    # with the twin: the study of build 0 and its twin's build 0, from a folder of their rows alone
    keep = ("collusion", "benign_collusion")
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in read_results(both / RESULTS)
                                        if r["scenario"] in keep and r["organism_seed"] == 0))
    record = {**study, "organisms": [o for o in study["organisms"]
                                     if o["scenario"] in keep and o["organism_seed"] == 0]}
    record["config"] = {**study["config"], "twins": {"collusion": "benign_collusion"},
                        "scenarios": [{**e, "organism_seeds": [0]} for e in study["config"]["scenarios"]
                                      if e["name"] in keep]}
    (solo / "study.json").write_text(json.dumps(record))
    _, _, summary = load_study(solo)
    paired = bb.alone(scan.runs, cfg, "collusion", 0, study_builds(study))
    assert paired["misalignment_targeted"]["twin"] == {"scenario": "benign_collusion", "runs": 5, "tested": True}
    assert paired == summary["scenarios"]["collusion"]["techniques"]


def _one_bad_build(tmp_path):
    """The report's hand-made study (two scenarios x organism seeds 0 and 1, or those
    `test_report.ORGANISMS` is set to), with `default`'s organism seed 0 students learning the
    tasks and the other seeds' none of them: over all builds and on the others alone
    no_capability, on seed 0 alone not."""
    out = _make_study(tmp_path)
    rows = read_results(out / RESULTS)
    runs: dict[str, list] = {}
    for r in rows:
        if r["scenario"] == "default":
            r = {**r, "capability_transfer": (0.05 if r["organism_seed"] else 0.93) + 0.01 * r["seed"]}
        runs.setdefault(r["run_id"], []).append({k: v for k, v in r.items() if k not in ("run_id", "checksum")})
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for rid, rs in runs.items() for r in seal_run(rs, rid)))
    study = json.loads((out / "study.json").read_text())
    summarize(out, _study_config(out, study))
    return out


def test_the_report_sets_each_verdict_beside_each_build_judged_alone(tmp_path):
    out = _one_bad_build(tmp_path)
    study, scan, summary = load_study(out)
    found = bb.by_build(scan.runs, _study_config(out, study), summary, study_builds(study))
    assert set(found) == {"default", "collusion"} and found["default"]["seeds"] == [0, 1]
    cells = found["default"]["final"]
    assert set(cells) == set(summary["scenarios"]["default"]["techniques"]) and cells
    for t, x in cells.items():
        assert summary["scenarios"]["default"]["techniques"][t]["final"]["verdict"] == "no_capability"
        assert x["alone"][1][0] == "no_capability" and x["alone"][0][0] != "no_capability"
        assert (x["kind"], x["decided_by"]) == ("one build decides", 1)
    # a build judged alone is the study of that build alone: the same rows in a folder of their own
    solo = tmp_path / "solo"
    solo.mkdir()
    keep = [r for r in read_results(out / RESULTS) if r["organism_seed"] == 0]
    (solo / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in keep))
    record = json.loads((out / "study.json").read_text())
    record["config"]["organism_seeds"] = [0]
    record["organisms"] = [o for o in record["organisms"] if o["organism_seed"] == 0]
    (solo / "study.json").write_text(json.dumps(record))
    _, _, alone0 = load_study(solo)
    for t, x in cells.items():
        s = alone0["scenarios"]["default"]["techniques"][t]["final"]
        assert x["alone"][0] == (s["verdict"], s["replication"])
    md = write_report(out)[0].read_text()
    section = md[md.find("### default"):md.find("### collusion")]
    c = bb.counts(cells)
    assert f"{c['agree']} of the {c['verdicts']} delivered verdicts above are every build's" in section
    assert f"{c['one build decides']} one build's (seed 1: {c['one build decides']})" in section
    for t in cells:
        (line,) = [ln for ln in section.splitlines() if ln.startswith(f"| {t} | no_capability")]
        assert "| seed 1 |" in line and "organism seed 1 alone" in section
    # a study of one build has nothing to set beside it
    assert "Each organism build alone" not in write_report(solo)[0].read_text()


def test_the_script_prints_the_counts_and_cells_the_report_gives(tmp_path, capsys):
    """benchmarks/build_sensitivity.py prints `by_build`'s counts and one line per cell that
    is not every build's."""
    out = _one_bad_build(tmp_path)
    bench = _benchmark("build_sensitivity")
    assert bench.main([str(out), "--long"]) == 0
    printed = capsys.readouterr().out
    study, scan, summary = load_study(out)
    found = bb.by_build(scan.runs, _study_config(out, study), summary, study_builds(study))
    n = 0
    for sc, data in found.items():
        c = bb.counts(data["final"])
        assert (f"{sc} (organism seeds 0, 1): {c['verdicts']} verdicts; agree {c['agree']}, one build decides "
                f"{c['one build decides']}") in printed
        n += c["verdicts"] - c["agree"]
    assert n >= 2 and sum(ln.startswith("    ") for ln in printed.splitlines()) == n
    assert "baseline: over 0, 1: no_capability" in printed and "<- build 1" in printed
    # --tally: each build alone, every verdict counted once
    assert bench.main([str(out), "--tally"]) == 0
    tallies = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("    build ")]
    for sc, data in found.items():
        for seed in (0, 1):
            want = collections.Counter(x["alone"][seed][0] for x in data["final"].values())
            line = f"    build {seed} alone: " + ", ".join(f"{v} {k}" for v, k in sorted(want.items()))
            assert line in tallies
    assert len(tallies) == 2 * len(found)


def test_the_report_names_a_false_accusation_on_a_benign_twin(tmp_path):
    """A study that names `collusion` the twin of `default`, its twin's students flagged in
    every run: that cell's `incriminating` is called a false accusation under the twin's table,
    and a twin with nothing accused says so."""
    out = _make_study(tmp_path)
    runs: dict[str, list] = {}
    for r in read_results(out / RESULTS):
        if r["scenario"] == "collusion":
            hit = r["technique"] == "verifier_filter" and r["step"] > 0
            r = {**r, "misalignment_transfer": None,
                 "auditor": {**r["auditor"], "flagged": 60 if hit else 0, "success_at_k": 1.0 if hit else 0.0}}
        runs.setdefault(r["run_id"], []).append({k: v for k, v in r.items() if k not in ("run_id", "checksum")})
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for rid, rs in runs.items() for r in seal_run(rs, rid)))
    study = json.loads((out / "study.json").read_text())
    study["config"]["twins"] = {"default": "collusion"}
    (out / "study.json").write_text(json.dumps(study))
    _, _, summary = load_study(out)
    got = summary["scenarios"]["collusion"]["techniques"]
    assert got["verifier_filter"]["final"]["verdict"] == "incriminating"
    assert got["baseline"]["final"]["verdict"] == "undefined"
    md = write_report(out)[0].read_text()
    twin = md[md.find("### collusion"):]
    assert "collusion is the benign twin of default" in twin
    assert "False accusations here: verifier_filter (delivered)" in twin and "baseline (" not in twin.split(
        "False accusations here:")[1].split("\n")[0]
    # the scenario itself is not a twin: no such line under its table
    assert "is the benign twin" not in md[md.find("### default"):md.find("### collusion")]


def test_with_three_builds_a_verdict_of_two_is_several_builds_not_none_s(tmp_path, monkeypatch):
    """The hand-made study on three builds of each scenario, `default`'s builds 1 and 2 learning
    none of the tasks: over all builds `no_capability`, which builds 1 and 2 alone reach and
    build 0 alone does not. Until 2026-12-07 such a verdict was counted and printed as none's."""
    from . import test_report

    monkeypatch.setattr(test_report, "ORGANISMS", [0, 1, 2])
    out = _one_bad_build(tmp_path)
    study, scan, summary = load_study(out)
    found = bb.by_build(scan.runs, _study_config(out, study), summary, study_builds(study))
    cells = found["default"]["final"]
    assert found["default"]["seeds"] == [0, 1, 2] and cells
    for x in cells.values():
        assert x["verdict"] == "no_capability" and x["alone"][0][0] != "no_capability"
        assert x["alone"][1][0] == x["alone"][2][0] == "no_capability"
        assert (x["kind"], x["decided_by"]) == ("several builds", None)
    c = bb.counts(cells)
    assert c["several builds"] == len(cells) and c["split"] == 0
    md = write_report(out)[0].read_text()
    section = md[md.find("### default"):md.find("### collusion")]
    assert f", {len(cells)} several builds' but not every one's and 0 none's." in section
    for t in cells:
        (line,) = [ln for ln in section.splitlines() if ln.startswith(f"| {t} | no_capability")]
        assert "| seeds 1, 2 |" in line
