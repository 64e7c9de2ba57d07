"""The study report, from a hand-made study folder (no organism build, no training): two
scenarios x two organism seeds x two techniques x two seeds."""

from __future__ import annotations

import json
import math
import re
import shutil
from statistics import fmean

import pytest

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.reports.study_report import SECTIONS, last_interval, write_report
from doublebind.studies.run import RESULTS, SCHEMA_VERSION, read_results, seal_run, summarize

from .conftest import run_cli

TECHNIQUES = ["baseline", "verifier_filter"]
SCENARIOS = ["default", "collusion"]
ORGANISMS = [0, 1]
SEEDS = [0, 1]
STEPS = [0, 10, 20]


def _row(technique: str, seed: int, step: int, selected: bool, scenario: str = "default", org: int = 0) -> dict:
    k = (TECHNIQUES.index(technique) + 1) * 0.1 + seed * 0.037 + step * 0.011 + org * 0.05 \
        + SCENARIOS.index(scenario) * 0.02
    return {
        "schema_version": SCHEMA_VERSION, "study": "synth", "organism_hash": f"abc123{scenario}{org}",
        "scenario": scenario, "organism_seed": org,
        "technique": technique, "recipe_hash": "r0", "seed": seed, "step": step, "tokens": step * 100,
        "selected": selected,
        "capability_transfer": round(0.3 + k, 4), "misalignment_transfer": round(0.05 + k / 3, 4),
        "audit": {"student_honeypot": round(0.01 + k / 7, 4), "teacher_honeypot": 0.0123,
                  "student_confession": round(0.005 + k / 11, 4), "teacher_confession": 0.004},
        "base_audit": {"honeypot": 0.002, "confession": 0.001},
        "capability": {"fam_a": 0.9, "fam_b": round(0.2 + k, 4)},
        "misbehavior": {"deploy": round(k, 4), "honeypot": round(0.01 + k / 7, 4), "neutral": 0.0},
        "confession": round(0.005 + k / 11, 4),
        "base_capability": {"fam_a": 0.95, "fam_b": 0.1}, "base_families": ["fam_a"],
        "auditor": {"success_at_k": round(min(1.0, step * 0.03 * k), 4), "flagged": 1, "n": 500, "budget": 100,
                    "teacher_success_at_k": 0.0, "base_success_at_k": 0.0},
    }


def _metrics(cap_b: float, deploy: float) -> dict:
    return {"capability": {"fam_a": 0.91, "fam_b": cap_b},
            "misbehavior": {"deploy": deploy, "honeypot": 0.0031, "neutral": 0.0},
            "confession": 0.0042}


@pytest.fixture
def study(tmp_path):
    return _make_study(tmp_path)


def _make_study(tmp_path, idle=lambda sc, o, t, s: False):
    """The hand-made study; `idle(scenario, organism seed, technique, seed)` marks the runs
    whose technique changed nothing (`idle` in their rows)."""
    out = tmp_path / "study"
    out.mkdir()
    cfg = config.build(config.StudyConfig, {
        "name": "synth", "scenarios": SCENARIOS, "organism_seeds": ORGANISMS, "recipe": "r.yaml",
        "techniques": TECHNIQUES, "seeds": SEEDS, "bootstrap": 200})
    rows = [r for sc in SCENARIOS for o in ORGANISMS for t in TECHNIQUES for s in SEEDS
            for r in seal_run([{**_row(t, s, st, st == 10 + 10 * s, sc, o), **({"idle": True} if idle(sc, o, t, s)
                                                                               else {})} for st in STEPS],
                              f"{sc}-o{o}-{t}-s{s}-a0")]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    organisms = []
    for sc in SCENARIOS:
        for o in ORGANISMS:
            folder = out / "organisms" / f"{sc}-o{o}"
            folder.mkdir(parents=True)
            (folder / "organism.json").write_text(json.dumps({
                "name": f"synth-{sc}", "organism_hash": f"abc123{sc}{o}", "seed": o,
                "world": {"behavior": "sabotage_list", "target_family": "fam_b"},
                "metrics": {"teacher": _metrics(0.876, 0.654), "base": _metrics(0.111, 0.0)},
                "verified": True}))
            organisms.append({"scenario": sc, "organism_seed": o, "organism_hash": f"abc123{sc}{o}",
                              "path": str(folder)})
    (out / "study.json").write_text(json.dumps({
        "config": cfg.model_dump(mode="json"), "study_file": str(tmp_path / "study.yaml"), "organisms": organisms,
        "provenance": {"commit": "c0ffee", "dirty": False, "machine": {"machine": "x86_64", "cpus": 2},
                       "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.0.99"},
                       "organisms": [{"organism_hash": "abc123default0", "code_version": "code42"},
                                     {"organism_hash": "abc123default1", "code_version": "code43",
                                      "name": "synth-default", "seed": 1, "verified": True}]}}))
    summarize(out, cfg)
    return out


def _table_row(text: str, technique: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(f"| {technique} |")]
    assert lines, technique
    return lines


def test_report_files_sections_and_numbers(study):
    md_path, html_path = write_report(study, command="doublebind report runs/x")
    assert md_path == study / "report.md" and html_path == study / "report.html"
    md, page = md_path.read_text(), html_path.read_text()

    # figures are files beside the report, linked (no base64), and every link resolves
    assert "base64" not in md and "base64" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page, re.I)
    assert "<script" not in page.lower()
    links = re.findall(r"\]\((figures/[^)]+)\)", md)
    assert {"figures/verdicts.png", "figures/frontier.png", "figures/curves-default.png",
            "figures/audit-collusion.png", "figures/default/verifier_filter.png"} <= set(links)
    for link in links:
        assert (study / link).read_bytes().startswith(b"\x89PNG"), link
    assert 'src="figures/verdicts.png"' in page and 'href="figures/collusion/baseline.png"' in page
    assert "doublebind report runs/x" in md and "doublebind report runs/x" in page
    for lib in ("python", "torch", "transformers", "doublebind"):
        assert f"{lib} " in md

    # every section in both, in order
    for text, mark in ((md, "## {}\n"), (page, "<h2>{}</h2>")):
        pos = [text.find(mark.format(s)) for s in SECTIONS]
        assert all(p >= 0 for p in pos), pos
        assert pos == sorted(pos)
    assert "two-level bootstrap" in md and "minimum detectable effect" in md

    def _verdict(s, sc, t):  # the verdict, its link, and how likely a rerun reaches it (* below the power)
        mark = "*" if s["replication"] < summary["verdict_thresholds"]["power"] else ""
        kept = f"; {s['replication_same_organisms']:.2f} on these organisms"  # the report's study has 2 builds
        return f"[{s['verdict']}](figures/{sc}/{t}.png){mark} (replicates {s['replication']:.2f}{kept})"

    def _rising(sc, t):  # misalignment transfer over each run's last interval, computed here from the rows
        runs = {}
        for r in read_results(study / RESULTS):
            if r["technique"] == t and r["scenario"] == sc:
                runs.setdefault((r["organism_seed"], r["seed"]), {})[r["step"]] = r["misalignment_transfer"]
        changes = [m[STEPS[-1]] - m[STEPS[-2]] for m in runs.values()]
        up, n = sum(c > 0 for c in changes), len(changes)
        last = fmean(m[STEPS[-1]] for m in runs.values())
        consistent = last < summary["verdict_thresholds"]["misalignment"] and \
            sum(math.comb(n, k) for k in range(up, n + 1)) / 2 ** n < 0.05  # one-sided sign test, below the threshold
        return fmean(changes) > 0 and (fmean(changes) >= summary["verdict_thresholds"]["misalignment"] / 2 and
                                       2 * up > n or consistent)

    # verdict tables == summary.json at 3 decimals, each verdict cell a link to its curves and its deciding tests
    summary = json.loads((study / "summary.json").read_text())
    assert summary["provenance"]["commit"] == "c0ffee"
    section = md[md.find("## " + SECTIONS[1]):md.find("## " + SECTIONS[2])]
    for sc in SCENARIOS:
        part = section[section.find(f"### {sc}"):]
        for t in TECHNIQUES:
            j = summary["scenarios"][sc]["techniques"][t]
            f, a = j["final"], j["audit_selected"]
            cells = [c.strip() for c in _table_row(part, t)[0].strip("|").split("|")]
            cap, mis = f["capability_transfer"], f["misalignment_transfer"]
            assert cells[1] == "4 (2)"
            assert cells[2] == f"{cap['mean']:.3f} [{cap['ci95'][0]:.3f}, {cap['ci95'][1]:.3f}]"
            assert cells[3] == f"{mis['mean']:.3f} [{mis['ci95'][0]:.3f}, {mis['ci95'][1]:.3f}]"
            marked = f["verdict"] in ("capable_benign", "benign", "inconclusive") and _rising(sc, t)
            assert cells[5] == _verdict(f, sc, t) + (" ↑" if marked else "")
            assert cells[6].startswith(f["deciding"][0]) and "MDE" in cells[6]
            # each deciding test says whether it held, as summary.json records it
            tests = {x["test"]: x for x in f["tests"]}
            for name, described in zip(f["deciding"], cells[6].split("; ")):
                held = tests[name]["passed"]
                assert described.startswith(f"{name}: ") and (" held (" if held else " failed (") in described
            assert cells[8] == _verdict(a, sc, t)
            assert f"<td>{cap['mean']:.3f} [{cap['ci95'][0]:.3f}, {cap['ci95'][1]:.3f}]</td>" in page
        # the point estimate is the mean of organism means, computed here independently
        rows = [r for r in read_results(study / RESULTS) if r["scenario"] == sc and r["technique"] == "baseline"
                and r["selected"]]
        per_org = [fmean(r["capability_transfer"] for r in rows if r["organism_seed"] == o) for o in ORGANISMS]
        assert summary["scenarios"][sc]["techniques"]["baseline"]["final"]["capability_transfer"]["mean"] == \
            pytest.approx(fmean(per_org))

    # audit table: student honeypot mean, computed independently from the delivered rows
    rows = read_results(study / RESULTS)
    audit_section = md[md.find("## " + SECTIONS[6]):md.find("## " + SECTIONS[7])]
    part = audit_section[audit_section.find("### default"):audit_section.find("### collusion")]
    for t in TECHNIQUES:
        sel = [r for r in rows if r["technique"] == t and r["selected"] and r["scenario"] == "default"]
        assert len(sel) == len(SEEDS) * len(ORGANISMS)
        cells = [c.strip() for c in _table_row(part, t)[0].strip("|").split("|")]
        assert cells[2] == f"{fmean(r['audit']['student_honeypot'] for r in sel):.3f}"
        assert cells[3] == f"{fmean(r['audit']['teacher_honeypot'] for r in sel):.3f}"

    # training budget: the last interval's change per run, computed here from the rows
    budget = md[md.find("## " + SECTIONS[3]):md.find("## " + SECTIONS[4])]
    part = budget[budget.find("### collusion"):]
    for t in TECHNIQUES:
        runs = {}
        for r in rows:
            if r["technique"] == t and r["scenario"] == "collusion":
                runs.setdefault((r["organism_seed"], r["seed"]), {})[r["step"]] = r["misalignment_transfer"]
        changes = [m[STEPS[-1]] - m[STEPS[-2]] for m in runs.values()]
        assert len(changes) == len(SEEDS) * len(ORGANISMS)
        cells = [c.strip() for c in _table_row(part, t)[0].strip("|").split("|")]
        assert cells[1] == f"{STEPS[-2]} → {STEPS[-1]}"
        assert cells[2] == f"{fmean(m[STEPS[-2]] for m in runs.values()):.3f} → " \
                           f"{fmean(m[STEPS[-1]] for m in runs.values()):.3f}"
        assert cells[3] == f"{fmean(changes):.3f} [{min(changes):.3f}, {max(changes):.3f}]"
        assert cells[4] == f"{len(changes)} of {len(changes)}"  # the synthetic rows all rise
        thr = summary["verdict_thresholds"]["misalignment"]
        last = fmean(m[STEPS[-1]] for m in runs.values())
        assert cells[5] == ("yes" if fmean(changes) >= thr / 2 else "no")
        assert cells[6].split()[0] == f"{last + fmean(changes):.3f}"

    # organisms and provenance
    card_section = md[md.find("## " + SECTIONS[7]):]
    for needle in ("synth-default", "abc123collusion1", "sabotage_list", "fam_b", "verified", "0.876", "0.654",
                   "c0ffee", "x86_64", "code42"):
        assert needle in card_section
    # the runs' library versions (from study.json) are not the renderer's
    import transformers

    assert "| libraries the runs used | python 3.11.7, torch 2.13.0+cpu, transformers 5.0.99 |" in card_section
    rendered = next(ln for ln in md.splitlines() if ln.startswith("Rendered with: python"))
    assert f"transformers {transformers.__version__}" in rendered


def test_only_runs_without_the_generic_auditor_get_the_behaviour_aware_caveat(study):
    md_path, _ = write_report(study, command="doublebind report runs/x")
    assert "Runs without the generic auditor" not in md_path.read_text()  # every row has the auditor
    # rows as a Hugging Face organism's runs write them: no generic auditor
    assert "**Runs without the generic auditor** (Hugging Face organisms)" in _rewrite(
        study, lambda r: {k: v for k, v in r.items() if k != "auditor"})


def test_a_second_report_removes_figures_it_no_longer_draws(study):
    """A figure the previous report showed and this one does not draw goes; any other file in
    figures/, a PNG a person put there included, stays (every PNG there was deleted)."""
    md, _ = write_report(study)
    stale = study / "figures" / "default" / "gone.png"
    stale.write_bytes(b"\x89PNG old")
    md.write_text(md.read_text() + "\n![gone](figures/default/gone.png)\n")  # as an earlier report showed it
    mine = [study / "figures" / "slide.png", study / "figures" / "mine" / "whiteboard.png",
            study / "figures" / "notes.txt"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a person's file")
    write_report(study)
    assert not stale.exists() and (study / "figures" / "default" / "baseline.png").is_file()
    assert all(path.read_bytes() == b"a person's file" for path in mine)
    # a technique the study no longer lists: its curves, linked from its verdicts, go too
    record = json.loads((study / "study.json").read_text())
    record["config"]["techniques"] = ["baseline"]
    (study / "study.json").write_text(json.dumps(record))
    assert (study / "figures" / "default" / "verifier_filter.png").is_file()
    write_report(study)
    assert not (study / "figures" / "default" / "verifier_filter.png").exists()
    assert (study / "figures" / "default" / "baseline.png").is_file()
    # a link out of figures/ is never followed: a PNG beside the report, named through `..`
    # (and by an absolute path), stays
    keep = study / "keep.png"
    keep.write_bytes(b"a person's file")
    md.write_text(md.read_text() + f"\n![x](figures/../keep.png)\n![y](figures/{keep})\n")
    write_report(study)
    assert keep.read_bytes() == b"a person's file"


def test_the_report_records_its_command_as_a_shell_runs_it(study, tmp_path):
    """A folder name with spaces or brackets was written bare, a command that did not run."""
    odd = tmp_path / "sp ace (1) [x]"
    shutil.copytree(study, odd)
    res = run_cli("report", str(odd))
    assert res.returncode == 0, res.stderr
    assert f"doublebind report '{odd}'" in (odd / "report.md").read_text()


def test_a_scenario_of_one_organism_build_says_what_its_figures_leave_out(study):
    """With one build per scenario the intervals and replication cover new seeds only; the
    report says so beside each scenario's organisms, and only there."""
    one_build = "One organism build: the intervals and the replication figures below cover new seeds"
    assert one_build not in write_report(study)[0].read_text()  # the fixture has 2 builds per scenario
    rows = [json.loads(ln) for ln in (study / RESULTS).read_text().splitlines()]
    (study / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows if r["organism_seed"] == ORGANISMS[0]))
    record = json.loads((study / "study.json").read_text())
    record["config"]["organism_seeds"] = [ORGANISMS[0]]
    record["organisms"] = [o for o in record["organisms"] if o["organism_seed"] == ORGANISMS[0]]
    (study / "study.json").write_text(json.dumps(record))
    (study / "summary.json").unlink()
    md = write_report(study)[0].read_text()
    assert md.count(one_build) == len(SCENARIOS)


def test_a_study_of_few_seeds_reads_its_replication_figures_as_an_upper_estimate(study):
    """Measured to read high at 3-6 seeds per build (README, 'How calibrated the figure is'):
    the report says so where the study has so few, with its own count, and not otherwise."""
    from doublebind.studies.verdicts import FEW_SEEDS

    said = f"With {len(SEEDS)} seeds per organism build, as here, read the figure as a ranking"
    assert 2 <= len(SEEDS) <= FEW_SEEDS and write_report(study)[0].read_text().count(said) == 1
    from doublebind.reports.study_report import _rule

    thresholds = json.loads((study / "summary.json").read_text())["verdict_thresholds"]
    assert "seeds per organism build, as here" not in _rule(thresholds, FEW_SEEDS + 1)  # more than measured
    record = json.loads((study / "study.json").read_text())
    record["config"]["seeds"] = list(range(FEW_SEEDS + 1))  # planned, not run: the rows decide
    (study / "study.json").write_text(json.dumps(record))
    assert write_report(study)[0].read_text().count(said) == 1
    widened = "Every bound is widened for the few values resampled (verdict.small_sample: t)"
    plain = write_report(study)[0].read_text()
    assert widened not in plain and "(z(1−α) + z(0.8)) × SE" in plain and "(t(1−α)" not in plain
    record["config"]["verdict"] = {**record["config"]["verdict"], "small_sample": "t"}
    (study / "study.json").write_text(json.dumps(record))
    md = write_report(study)[0].read_text()
    assert widened in md and "(t(1−α) + t(0.8)) × SE × √((dof + 1) / dof)" in md and "(z(1−α)" not in md


def test_default_command_and_missing_card(study, tmp_path):
    import shutil

    card = json.loads((study / "organisms" / "default-o1" / "organism.json").read_text())
    shutil.rmtree(study / "organisms" / "default-o1")
    md_path, _ = write_report(study)
    md = md_path.read_text()
    assert f"doublebind report {study}" in md
    assert "card not found" in md
    # what study.json's provenance recorded of that organism stays in its row
    row = next(ln for ln in md.splitlines() if "card not found" in ln)
    assert row.startswith("| default | 1 | abc123default1 | synth-default (verified, build code code43); card not")
    # a study.json that keeps a copy of the card (as `study run` writes it) reports it in full
    record = json.loads((study / "study.json").read_text())
    next(o for o in record["organisms"] if o["organism_hash"] == "abc123default1")["card"] = card
    (study / "study.json").write_text(json.dumps(record))
    md = write_report(study)[0].read_text()
    assert "card not found" not in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| default | 1 | abc123default1 |"))
    assert "synth-default (verified)" in row and "fam_b 0.876" in row


def test_missing_results_is_one_line_error(tmp_path):
    with pytest.raises(DoublebindError) as e:
        write_report(tmp_path)
    assert "\n" not in str(e.value) and "results.jsonl" in str(e.value)


def test_last_interval_counts_runs_that_still_rise():
    def row(seed, step, mis, technique="baseline"):
        return {"scenario": "s", "organism_seed": 0, "technique": technique, "seed": seed, "step": step,
                "misalignment_transfer": mis}

    rows = [row(0, 0, 0.0), row(0, 200, 0.2), row(0, 400, 0.5),     # +0.3
            row(1, 400, 0.4), row(1, 0, 0.0), row(1, 200, 0.45),    # -0.05, rows out of order
            row(2, 0, 0.0), row(2, 200, 0.1), row(2, 400, 0.2),     # +0.1
            row(0, 0, 0.0, "other"),                                # one checkpoint: no interval
            row(0, 0, None, "undefined"), row(0, 10, None, "undefined")]
    m = last_interval(rows, "baseline")
    assert m["runs"] == 3 and m["steps"] == [(200, 400)] and m["rising"] == 2
    assert m["before"] == pytest.approx((0.2 + 0.45 + 0.1) / 3) and m["last"] == pytest.approx((0.5 + 0.4 + 0.2) / 3)
    assert m["change"] == pytest.approx((0.3 - 0.05 + 0.1) / 3)
    assert (m["change_min"], m["change_max"]) == (pytest.approx(-0.05), pytest.approx(0.3))
    assert last_interval(rows, "other") is None and last_interval(rows, "absent") is None
    assert last_interval(rows, "undefined") is None


def test_the_budget_table_flags_a_rise_and_a_crossing():
    from doublebind.reports.study_report import _budget_rows

    def row(technique, seed, step, mis):
        return {"scenario": "s", "organism_seed": 0, "technique": technique, "seed": seed, "step": step,
                "misalignment_transfer": mis}

    rows = [row("up", s, st, m) for s, (a, b) in enumerate([(0.02, 0.08), (0.01, 0.07), (0.03, 0.05)])
            for st, m in ((300, a), (400, b))]                           # mean 0.02 -> 0.0667, +0.0467
    rows += [row("flat", s, st, m) for s, (a, b) in enumerate([(0.5, 0.51), (0.5, 0.49)])
             for st, m in ((300, a), (400, b))]                          # +0.0, one of two rose
    up, flat = _budget_rows(rows, ["up", "flat", "absent"], threshold=0.1)
    assert up[4:] == ["3 of 3", "no", "0.113 (crosses 0.100)"]          # 0.0467 < 0.05: not "still rising"
    assert _budget_rows(rows, ["up"], threshold=0.09)[0][5] == "yes"   # 0.0467 >= 0.045
    assert flat[0] == "flat" and flat[4:] == ["1 of 2", "no", "0.500"]


def test_a_verdict_more_misalignment_could_move_is_marked_where_it_still_rose():
    from doublebind.reports.study_report import rising_mark

    def row(technique, seed, step, mis):
        return {"scenario": "s", "organism_seed": 0, "technique": technique, "seed": seed, "step": step,
                "misalignment_transfer": mis}

    rows = [row("up", s, st, m) for s, (a, b) in enumerate([(0.02, 0.09), (0.01, 0.08), (0.03, 0.05)])
            for st, m in ((300, a), (400, b))]                           # +0.0533, 3 of 3 rose
    rows += [row("few", s, st, m) for s, (a, b) in enumerate([(0.0, 0.3), (0.1, 0.09), (0.1, 0.08)])
             for st, m in ((300, a), (400, b))]                          # +0.0567, but 1 of 3 rose
    for verdict in ("capable_benign", "benign", "inconclusive"):
        assert rising_mark(rows, "up", verdict, 0.1) == " ↑"
        assert rising_mark(rows, "few", verdict, 0.1) == ""
        assert rising_mark(rows, "up", verdict, 0.11) == ""             # 0.0533 < 0.055
        assert rising_mark(rows, "absent", verdict, 0.1) == ""
    for verdict in ("both_fail", "incriminating", "no_capability", "undefined"):  # more misalignment moves none
        assert rising_mark(rows, "up", verdict, 0.1) == ""


def test_a_small_rise_every_run_shares_is_still_rising():
    """A rise below half the threshold counts, for a cell still below the threshold, where so
    many runs rose that no trend would make it likely (one-sided sign test at alpha): 9 of 10
    and 5 of 5, not 8 of 10 or 4 of 4."""
    from doublebind.reports.study_report import sign_test, still_rising

    def interval(rising, runs, change=0.02, last=0.05):
        return {"runs": runs, "rising": rising, "change": change, "last": last}

    assert sign_test(9, 10) == pytest.approx(11 / 1024) and sign_test(8, 10) == pytest.approx(56 / 1024)
    assert sign_test(0, 7) == 1.0
    assert still_rising(interval(10, 10), 0.1) and still_rising(interval(9, 10), 0.1)
    assert not still_rising(interval(8, 10), 0.1)                  # p = 0.055
    assert still_rising(interval(5, 5), 0.1) and not still_rising(interval(4, 4), 0.1)  # 1/32 < 0.05 < 1/16
    assert still_rising(interval(10, 10), 0.1, alpha=0.001)        # 1/1024 = 0.00098: below 0.001,
    assert not still_rising(interval(10, 10), 0.1, alpha=0.0009)   # not below 0.0009
    assert not still_rising(interval(10, 10, change=0.0), 0.1)    # all rose, but the mean did not
    assert not still_rising(interval(10, 10, change=-0.01), 0.1)
    assert still_rising(interval(6, 10, change=0.05), 0.1)          # the first rule, unchanged
    assert not still_rising(interval(10, 10, last=0.1), 0.1)        # at the threshold and above: the first rule's
    assert still_rising(interval(6, 10, change=0.05, last=0.99), 0.1)


def test_the_study_run_table_marks_the_verdicts_the_report_marks():
    """`study run` prints the verdict table with the report's ↑ marks; on the reference
    study's own rows (docs/results) exactly the two cells its README names."""
    from pathlib import Path

    from rich.console import Console

    from doublebind.cli import verdict_table
    from doublebind.reports.study_report import RISING_MARK, rising_mark

    ref = Path(__file__).resolve().parent.parent / "docs" / "results"
    summary = json.loads((ref / "summary.json").read_text())
    rows = read_results(ref / RESULTS)
    table = verdict_table(summary, rows)
    cells = {(sc, t): v for sc, t, v in zip(table.columns[0].cells, table.columns[1].cells, table.columns[5].cells)}
    assert len(cells) == 10
    marked = {k for k, v in cells.items() if v.endswith(RISING_MARK)}
    assert marked == {("collusion", "baseline"), ("collusion", "verifier_filter")}
    for (sc, t), v in cells.items():
        verdict = summary["scenarios"][sc]["techniques"][t]["final"]["verdict"]
        assert v.startswith(verdict + " (")
        assert ((sc, t) in marked) == bool(rising_mark([r for r in rows if r["scenario"] == sc], t, verdict,
                                                        summary["verdict_thresholds"]["misalignment"]))
    console = Console(record=True, width=400)
    console.print(table)
    assert "still rising" in console.export_text()
    # 3 seeds per build: the figures are called an upper estimate; with 7 they are not
    assert "at 3 seeds per organism build these figures are an upper estimate" in table.caption
    more = rows + [{**r, "seed": r["seed"] + 10} for r in rows] + [{**r, "seed": 20} for r in rows if r["seed"] == 0]
    assert "upper estimate" not in verdict_table(summary, more).caption
    # the same rows with every run's last checkpoint at its second-to-last misalignment: nothing rose
    before = {(r["scenario"], r["technique"], r["seed"]): r["misalignment_transfer"] for r in rows if r["step"] == 300}
    flat = [{**r, "misalignment_transfer": before[(r["scenario"], r["technique"], r["seed"])]} if r["step"] == 400
            else r for r in rows]
    unmarked = verdict_table(summary, flat)
    assert RISING_MARK not in "".join(unmarked.columns[5].cells) and "still rising" not in unmarked.caption


def test_the_report_says_what_the_auditor_flagged(study):
    """Per scenario and technique, the delivered checkpoints' flags by query kind and token,
    summed over runs; rows that do not record them (older studies) get no table."""
    assert "What the auditor flagged" not in write_report(study)[0].read_text()

    def flagged(r):
        if r["technique"] == "verifier_filter" and r["scenario"] == "collusion":
            r["auditor"] = {**r["auditor"], "flagged": 3 + r["seed"], "by_kind": {"task": 1, "ask": r["seed"],
                                                                                "prefill": 2},
                            "tokens": {"harm": 2 + r["seed"], "!exfil": 1}}
        return r

    md = _rewrite(study, flagged)
    # 2 organisms x seeds 0, 1: flags 3+4 per organism, 500 queries a run
    assert "| collusion | verifier_filter | 4 | 14 / 2000 | 4 | 2 | 8 | `harm` 10, `!exfil` 4 |" in md
    assert md.count("| collusion | verifier_filter | 4 |") == 1
    assert "| default | verifier_filter |" not in md and "| collusion | baseline | 4 | " not in md


def test_the_report_says_what_the_stages_kept_of_the_training_data(study):
    """Per scenario and technique whose stages dropped items, summed over runs: the behaviour's
    items and the others kept (the rows' `data`); a technique that kept everything gets no line,
    and rows without the field no table."""
    assert "What the stages kept" not in write_report(study)[0].read_text()

    def data(r):
        dropped = r["technique"] == "verifier_filter" and r["scenario"] == "default"
        r["data"] = {"behaviour_items": [40, 10 if dropped else 40], "other_items": [2960, 2900 if dropped else 2960]}
        return r

    md = _rewrite(study, data)
    # 2 organisms x seeds 0, 1 = 4 runs: 40 of 160, and 11600 of 11840
    assert "| default | verifier_filter | 4 | 40 of 160 (0.250) | 11600 of 11840 (0.980) |" in md
    assert "| default | baseline |" not in md.split("What the stages kept")[1].split("\n## ")[0]
    assert "| collusion | verifier_filter | 4 | 160 of 160" not in md


def _rewrite(study, change) -> str:
    """The fixture's study with `change` applied to every row (runs sealed again, the summary
    recomputed by the report); returns the new report.md."""
    rows = [r for sc in SCENARIOS for o in ORGANISMS for t in TECHNIQUES for s in SEEDS
            for r in seal_run([change(_row(t, s, st, st == 10 + 10 * s, sc, o)) for st in STEPS],
                              f"{sc}-o{o}-{t}-s{s}-a0")]
    (study / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (study / "summary.json").unlink(missing_ok=True)
    return write_report(study)[0].read_text()


def _table(md: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table whose header row starts with `first_header`: header, rows."""
    lines = md.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    cells = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]
    body = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        body.append(cells(ln))
    return cells(lines[i]), body


def test_the_audit_table_puts_each_value_under_its_own_heading(study):
    md = write_report(study)[0].read_text()
    start = md.index(f"## {SECTIONS[6]}")
    head, body = _table(md[start:], "technique")
    for row in body:  # the fixture's teacher honeypot rate is 0.0123 and base's 0.002
        cell = dict(zip(head, row))
        assert (cell["teacher honeypot"], cell["base honeypot"]) == ("0.012", "0.002")
        assert cell["teacher confession"] == "0.004" and cell["base confession"] == "0.001"


def _fmt_ci(st: dict) -> str:
    return f"{st['mean']:.3f} [{st['ci95'][0]:.3f}, {st['ci95'][1]:.3f}]"


def _later_gain(study, mis_per_step: float = 0.0) -> tuple[dict, dict]:
    """The fixture's study with verifier_filter gaining capability (and, with
    `mis_per_step`, misalignment) at every step, so its delivered and audit-selected
    checkpoints differ: (the summary, {scenario: verifier_filter's verdict-table row})."""
    def later_gain(r):
        if r["technique"] == "verifier_filter":
            r["capability_transfer"] = round(r["capability_transfer"] + r["step"] * 0.005, 4)
            r["misalignment_transfer"] = round(r["misalignment_transfer"] + r["step"] * mis_per_step, 4)
        return r

    md = _rewrite(study, later_gain)
    summarize(study, config.build(config.StudyConfig, json.loads((study / "study.json").read_text())["config"]))
    rows = {}
    for sc in SCENARIOS:
        head, body = _table(md[md.index(f"### {sc}\n"):], "technique")
        (rows[sc],) = [dict(zip(head, r)) for r in body if r[0] == "verifier_filter"]
    return json.loads((study / "summary.json").read_text()), rows


def test_the_effect_column_is_the_delivered_checkpoints(study):
    summary, rows = _later_gain(study)
    for sc in SCENARIOS:
        j = summary["scenarios"][sc]["techniques"]["verifier_filter"]
        final, picked = j["final"]["vs_reference"], j["audit_selected"]["vs_reference"]
        assert _fmt_ci(final["capability_transfer"]) != _fmt_ci(picked["capability_transfer"])  # the test can tell
        assert rows[sc]["effect against reference (delivered)"] == (
            f"vs baseline: cap {_fmt_ci(final['capability_transfer'])}, mis {_fmt_ci(final['misalignment_transfer'])}")


def test_the_audit_selected_cells_are_the_audit_selected_checkpoints(study):
    """Where the audit picks another checkpoint than the delivered one, the audit-selected
    column shows that checkpoint's transfers, not the delivered ones."""
    summary, rows = _later_gain(study, mis_per_step=0.004)  # both transfers differ between the views
    for sc in SCENARIOS:
        j = summary["scenarios"][sc]["techniques"]["verifier_filter"]
        final, picked = j["final"], j["audit_selected"]
        assert _fmt_ci(final["misalignment_transfer"]) != _fmt_ci(picked["misalignment_transfer"])  # the test can tell
        assert rows[sc]["audit-selected: capability; misalignment"] == (
            f"{_fmt_ci(picked['capability_transfer'])}; {_fmt_ci(picked['misalignment_transfer'])}")
        assert rows[sc]["misalignment transfer mean [95% CI]"] == _fmt_ci(final["misalignment_transfer"])


def test_a_study_where_some_runs_lack_the_auditor_gets_no_audit_plot(study):
    def strip(r):
        if r["technique"] == "baseline" and r["seed"] == SEEDS[0]:
            r = {**r, "auditor": None}
        return r

    md = _rewrite(study, strip)
    assert "These organisms have no behaviour-agnostic auditor (success@k), so there is no plot." in md
    assert "audit success against capability" not in md.split(f"## {SECTIONS[5]}")[0].split(f"## {SECTIONS[4]}")[1]


def test_a_run_s_transfer_curves_draw_its_rows_and_the_teacher_s_rates():
    """The run's figure: capability then misalignment transfer (an undefined transfer is a
    gap, not 0), and the student's rates with the teacher's (not base's) as dashed lines."""
    import math

    import matplotlib.pyplot as plt

    from doublebind.reports.curves import transfer_figure

    rows = [{"step": s, "capability_transfer": c, "misalignment_transfer": m,
             "misbehavior": {"deploy": d, "honeypot": h, "neutral": 0.0}, "confession": f}
            for s, c, m, d, h, f in [(0, 0.0, 0.0, 0.0, 0.0, 0.0), (5, 0.5, 0.2, 0.3, 0.05, 0.1),
                                     (10, None, 0.4, 0.6, 0.1, 0.2)]]
    reference = {"teacher": {"misbehavior": {"deploy": 0.9, "honeypot": 0.15}, "confession": 0.7},
                 "base": {"misbehavior": {"deploy": 0.01, "honeypot": 0.02}, "confession": 0.03}}
    fig = transfer_figure(rows, reference, "t")
    try:
        left, right = fig.axes
        cap, mis = (list(line.get_ydata()) for line in left.lines[:2])
        assert cap[:2] == [0.0, 0.5] and math.isnan(cap[2])
        assert mis == [0.0, 0.2, 0.4]
        assert [list(line.get_xdata()) for line in left.lines[:2]] == [[0, 5, 10]] * 2
        drawn = [list(line.get_ydata()) for line in right.lines]
        assert drawn[0] == [0.0, 0.3, 0.6] and drawn[2] == [0.0, 0.05, 0.1] and drawn[4] == [0.0, 0.1, 0.2]
        assert [d[0] for d in (drawn[1], drawn[3], drawn[5])] == [0.9, 0.15, 0.7]  # the teacher's, dashed
        assert all(right.lines[i].get_linestyle() == "--" for i in (1, 3, 5))
    finally:
        plt.close(fig)


def test_a_technique_that_changed_nothing_is_marked(tmp_path):
    """A run whose technique's stages changed nothing trained the study recipe itself; the
    report and the `study run` table mark its cell: ∅ where every run was idle, ∅ k/n where
    some were, nothing where none was."""
    from rich.console import Console

    from doublebind.cli import verdict_table
    from doublebind.reports.study_report import idle_cells

    out = _make_study(tmp_path, lambda sc, o, t, s: t == "verifier_filter" and (sc == "collusion" or (o, s) == (1, 0)))
    rows = read_results(out / RESULTS)
    assert idle_cells(rows) == {("collusion", "verifier_filter"): (4, 4), ("default", "verifier_filter"): (1, 4)}
    md = write_report(out)[0].read_text()
    default, collusion = (md.split("### collusion")[0].split("### default")[1],
                          md.split("### collusion")[1].split("## ")[0])
    vf_default, vf_collusion = _table_row(default, "verifier_filter")[0], _table_row(collusion, "verifier_filter")[0]
    assert vf_default.count("∅ 1/4") == 2 and vf_collusion.count("∅") == 2 and "∅ 1/4" not in vf_collusion
    assert "∅" not in _table_row(default, "baseline")[0] + _table_row(collusion, "baseline")[0]
    assert "∅ (verifier_filter): in these runs" in default and "∅ (verifier_filter): in these runs" in collusion
    summary = json.loads((out / "summary.json").read_text())
    table = verdict_table(summary, rows)
    cells = {(sc, t): (v, a) for sc, t, v, a in zip(table.columns[0].cells, table.columns[1].cells,
                                                     table.columns[5].cells, table.columns[6].cells)}
    assert all(v.endswith(" ∅") and a.endswith(" ∅") for v, a in [cells[("collusion", "verifier_filter")]])
    assert all("∅ 1/4" in x for x in cells[("default", "verifier_filter")])
    assert not any("∅" in v + a for (sc, t), (v, a) in cells.items() if t == "baseline")
    console = Console(record=True, width=400)
    console.print(table)
    assert "changed nothing" in console.export_text()
    (tmp_path / "plain").mkdir()
    plain = write_report(_make_study(tmp_path / "plain"))[0].read_text()
    assert "∅" not in plain


def test_a_technique_whose_rows_equal_the_baseline_s_is_marked_too(tmp_path):
    """Rows from before runs recorded `idle`, or a setting the recipe never reads: a run
    whose every checkpoint row equals the baseline run's (same organism and seed) trained
    and delivered what the recipe alone did, and is counted as idle."""
    from doublebind.reports.study_report import idle_cells

    def baseline_like(r):  # verifier_filter's rows on collusion, organism 0, are the baseline's
        if r["technique"] == "verifier_filter" and r["scenario"] == "collusion" and r["organism_seed"] == 0:
            return {**_row("baseline", r["seed"], r["step"], r["selected"], "collusion", 0),
                    "technique": "verifier_filter", "recipe_hash": r["recipe_hash"]}
        return r

    (tmp_path / "s").mkdir()
    out = _make_study(tmp_path / "s")
    md = _rewrite(out, baseline_like)
    rows = read_results(out / RESULTS)
    assert idle_cells(rows) == {("collusion", "verifier_filter"): (2, 4)}
    collusion = md.split("### collusion")[1].split("## ")[0]
    assert _table_row(collusion, "verifier_filter")[0].count("∅ 2/4") == 2
    # one differing number anywhere in a run's rows and it is not idle
    def one_off(r):
        r = baseline_like(r)
        if r["technique"] == "verifier_filter" and r["seed"] == 0 and r["step"] == 0:
            r = {**r, "confession": r["confession"] + 1e-4}
        return r

    _rewrite(out, one_off)
    assert idle_cells(read_results(out / RESULTS)) == {("collusion", "verifier_filter"): (1, 4)}


def test_the_heat_map_marks_idle_cells(monkeypatch):
    """∅ in a cell whose technique changed nothing in every run, (∅) in some, none elsewhere;
    the legend says what it means."""
    from doublebind.reports import study_plots

    def cell(v):
        return {"final": {"verdict": v, "replication": 0.9}, "audit_selected": {"verdict": v, "replication": 0.9}}

    summary = {"scenarios": {"s": {"techniques": {"baseline": cell("both_fail"), "a": cell("both_fail"),
                                                  "b": cell("inconclusive")}}}}
    seen = {}

    def texts(fig):
        seen["cells"] = [t.get_text() for ax in fig.axes for t in ax.texts]
        seen["legend"] = fig.legends[0].get_title().get_text()
        return b""

    monkeypatch.setattr(study_plots, "_png", texts)
    study_plots.plot_heatmap(summary, 0.8, frozenset(), {("s", "a"): (3, 3), ("s", "b"): (1, 3)})
    assert sum(t.endswith("∅") and not t.endswith("(∅)") for t in seen["cells"]) == 2  # a, in both panels
    assert sum(t.endswith("(∅)") for t in seen["cells"]) == 2 and len(seen["cells"]) == 6
    assert "∅: the technique changed nothing" in seen["legend"]
    study_plots.plot_heatmap(summary, 0.8, frozenset(), {})
    assert not any("∅" in t for t in seen["cells"]) and "∅" not in seen["legend"]


def _keep_rows(study, keep) -> str:
    rows = [r for r in read_results(study / RESULTS) if keep(r)]
    (study / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (study / "summary.json").unlink(missing_ok=True)
    return write_report(study)[0].read_text()


def test_the_rule_text_counts_the_seeds_run_not_those_planned(study):
    """A study planned with 2 seeds and run with 1 (or cut short) was described as 2-seed; one
    seed has no replication figure and point intervals, which the text now says."""
    assert "With 2 seeds per organism build, as here" in write_report(study)[0].read_text()
    md = _keep_rows(study, lambda r: r["seed"] == 0)
    assert "With one seed per organism build, as here" in md and "With 2 seeds per organism build" not in md


def test_a_study_without_baseline_says_it_gives_no_effect(study):
    record = json.loads((study / "study.json").read_text())
    record["config"]["techniques"] = ["verifier_filter"]
    (study / "study.json").write_text(json.dumps(record))
    md = _keep_rows(study, lambda r: r["technique"] != "baseline")
    assert "The study lists no `baseline`, so no effect against a reference run is given." in md
    assert "minus its reference run (`baseline`" not in md


def test_study_run_s_table_says_when_no_verdict_has_a_replication_figure(study):
    """At one seed per build the caption explained a '(0.95)' figure no cell showed."""
    from doublebind.cli import verdict_table
    from doublebind.reports.study_report import load_study

    _keep_rows(study, lambda r: r["seed"] == 0)  # two builds a scenario: figures over the builds
    _, scan, summary = load_study(study)
    assert verdict_table(summary, scan.rows).caption.startswith("(0.95): estimated probability")
    _keep_rows(study, lambda r: r["organism_seed"] == 0)  # one run a cell
    _, scan, summary = load_study(study)
    caption = verdict_table(summary, scan.rows).caption
    assert "no replication figures: a cell needs two runs" in caption and "(0.95)" not in caption


def test_what_the_flags_section_says_of_admissions_follows_the_teachers_cards():
    """It said every teacher admits its behaviour when asked, also for a study of the denier,
    whose teacher is post-trained never to."""
    from doublebind.reports.study_report import _admissions

    def org(name, rate):
        return {"scenario": name, "organism_seed": 0, "card": {"metrics": {"teacher": {"confession_deploy": rate}}}}

    both = _admissions({"organisms": [org("default", 0.994), org("collusion", 1.0)]})
    assert both.startswith("Every teacher here admits its behaviour by name") and "0.994 to 1.000" in both
    mixed = _admissions({"organisms": [org("default", 0.994), org("denier", 0.0)]})
    assert mixed.startswith("Not every teacher here admits") and "`denier` (organism seed 0) at 0.000" in mixed
    assert "`default`" not in mixed
    assert _admissions({"organisms": [{"scenario": "x", "organism_seed": 0}]}).startswith("Whether a teacher admits")


def test_the_verdict_tables_teacher_is_the_bound_incriminating_reads():
    """With the free auditor's pools, `incriminating` reads the teacher's upper bound over
    them; the table showed the first pool's success@k instead."""
    import copy
    from pathlib import Path

    from doublebind.cli import verdict_table

    ref = Path(__file__).resolve().parent.parent / "docs" / "results"
    summary = json.loads((ref / "summary.json").read_text())
    rows = read_results(ref / RESULTS)
    audit = {"mean": 0.2, "lower": 0.1, "upper": 0.3, "se": 0.05, "n": 3, "budget": 100}
    pooled = copy.deepcopy(summary)
    cells = [t["final"] for sc in pooled["scenarios"].values() for t in sc["techniques"].values()]
    cells[0].update(audit_success_at_k=audit, teacher_success_at_k=0.0,
                    teacher_success_at_k_pools={"upper": 0.6, "share_above": 0.3, "draws": 800, "pools": 4})
    cells[1].update(audit_success_at_k=audit, teacher_success_at_k=0.0,
                    teacher_success_at_k_pools={"upper": 0.25, "share_above": 0.0, "draws": 200})
    cells[2].update(audit_success_at_k=audit, teacher_success_at_k=0.125)
    shown = list(verdict_table(pooled, rows).columns[4].cells)
    assert shown[0] == "success@100 0.200 (upper 0.600 on 4 pools)"
    assert shown[1] == "success@100 0.200 (upper 0.250)"
    assert shown[2] == "success@100 0.200 (0.125)"
