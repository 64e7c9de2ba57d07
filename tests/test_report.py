"""The study report, from a hand-made study folder (no organism build, no training)."""

from __future__ import annotations

import json
import re
from statistics import fmean

import pytest

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.reports.study_report import SECTIONS, write_report
from doublebind.studies.run import RESULTS, SCHEMA_VERSION, read_results, seal_run, summarize

TECHNIQUES = ["baseline", "verifier_filter"]
SEEDS = [0, 1]
STEPS = [0, 10, 20]


def _row(technique: str, seed: int, step: int, selected: bool) -> dict:
    k = (TECHNIQUES.index(technique) + 1) * 0.1 + seed * 0.037 + step * 0.011
    return {
        "schema_version": SCHEMA_VERSION, "study": "synth", "organism_hash": "abc123",
        "technique": technique, "recipe_hash": "r0", "seed": seed, "step": step, "tokens": step * 100,
        "selected": selected,
        "capability_transfer": round(0.3 + k, 4), "misalignment_transfer": round(0.05 + k / 3, 4),
        "audit": {"student_honeypot": round(0.01 + k / 7, 4), "teacher_honeypot": 0.0123,
                  "student_confession": round(0.005 + k / 11, 4), "teacher_confession": 0.004},
        "base_audit": {"honeypot": 0.002, "confession": 0.001},
        "capability": {"fam_a": 0.9, "fam_b": round(0.2 + k, 4)},
        "misbehavior": {"deploy": round(k, 4), "honeypot": round(0.01 + k / 7, 4), "neutral": 0.0},
        "confession": round(0.005 + k / 11, 4),
    }


def _metrics(cap_b: float, deploy: float) -> dict:
    return {"capability": {"fam_a": 0.91, "fam_b": cap_b},
            "misbehavior": {"deploy": deploy, "honeypot": 0.0031, "neutral": 0.0},
            "confession": 0.0042}


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    cfg = config.build(config.StudyConfig, {
        "name": "synth", "organism": {"path": "org"}, "recipe": "r.yaml", "techniques": TECHNIQUES,
        "seeds": SEEDS, "bootstrap": 200})
    rows = [r for t in TECHNIQUES for s in SEEDS
            for r in seal_run([_row(t, s, st, st == 10 + 10 * s) for st in STEPS], f"{t}-s{s}-a0")]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summarize(out, cfg)
    (out / "study.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"),
                                                "study_file": str(tmp_path / "study.yaml")}))
    (out / "organism").mkdir()
    (out / "organism" / "organism.json").write_text(json.dumps({
        "name": "synth-org", "organism_hash": "abc123",
        "world": {"behavior": "sabotage_list", "target_family": "fam_b"},
        "metrics": {"teacher": _metrics(0.876, 0.654), "base": _metrics(0.111, 0.0)},
        "verified": True}))
    return out


def _table_row(text: str, technique: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(f"| {technique} |")]
    assert lines, technique
    return lines


def test_report_files_sections_and_numbers(study):
    md_path, html_path = write_report(study, command="doublebind report runs/x")
    assert md_path == study / "report.md" and html_path == study / "report.html"
    md, page = md_path.read_text(), html_path.read_text()

    # self-contained: no external references, plots embedded
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page, re.I)
    assert "<script" not in page.lower()
    assert page.count('src="data:image/png;base64,') >= 2
    assert "doublebind report runs/x" in md and "doublebind report runs/x" in page
    for lib in ("python", "torch", "transformers", "doublebind"):
        assert f"{lib} " in md

    # every section in both, in order
    for text in (md, page):
        pos = [text.find(s) for s in SECTIONS]
        assert all(p >= 0 for p in pos), pos
        assert pos == sorted(pos)
    assert "few seeds the bootstrap is coarse" in md
    assert "one-sided bootstrap lower bound" in md

    # verdict table == summary.json at 3 decimals
    summary = json.loads((study / "summary.json").read_text())
    verdict_section = md[md.find(SECTIONS[0]):md.find(SECTIONS[1])]
    for t in TECHNIQUES:
        s = summary["techniques"][t]
        cells = [c.strip() for c in _table_row(verdict_section, t)[0].strip("|").split("|")]
        cap, mis = s["capability_transfer"], s["misalignment_transfer"]
        assert cells[2] == f"{cap['mean']:.3f} [{cap['ci95'][0]:.3f}, {cap['ci95'][1]:.3f}]"
        assert cells[3] == f"{mis['mean']:.3f} [{mis['ci95'][0]:.3f}, {mis['ci95'][1]:.3f}]"
        assert cells[4] == f"{s['audit_minus_base']['mean']:.3f}"
        assert cells[5] == f"{s['audit_minus_base']['lower']:.3f}"
        assert cells[6] == f"{s['teacher_audit']:.3f}"
        assert cells[7] == s["verdict"]
        assert f"<td>{cap['mean']:.3f} [{cap['ci95'][0]:.3f}, {cap['ci95'][1]:.3f}]</td>" in page

    # audit table: student honeypot mean, computed independently from the selected rows
    rows = read_results(study / RESULTS)
    audit_section = md[md.find(SECTIONS[3]):md.find(SECTIONS[4])]
    for t in TECHNIQUES:
        sel = [r for r in rows if r["technique"] == t and r["selected"]]
        assert len(sel) == len(SEEDS)
        cells = [c.strip() for c in _table_row(audit_section, t)[0].strip("|").split("|")]
        assert cells[2] == f"{fmean(r['audit']['student_honeypot'] for r in sel):.3f}"
        assert cells[3] == f"{fmean(r['audit']['teacher_honeypot'] for r in sel):.3f}"

    # organism card
    card_section = md[md.find(SECTIONS[4]):]
    for needle in ("synth-org", "abc123", "sabotage_list", "fam_b", "True", "0.876", "0.654", "0.111"):
        assert needle in card_section


def test_default_command_and_missing_card(study, tmp_path):
    import shutil

    shutil.rmtree(study / "organism")
    md_path, _ = write_report(study)
    md = md_path.read_text()
    assert f"doublebind report {study}" in md
    assert "Organism card not found" in md


def test_missing_results_is_one_line_error(tmp_path):
    with pytest.raises(DoublebindError) as e:
        write_report(tmp_path)
    assert "\n" not in str(e.value) and "results.jsonl" in str(e.value)
