"""Study files are append-only and self-checking: a corrupt line is reported by number and
never deleted, a run missing rows is redone, summary.json is recomputed from the rows, and
`report` writes nothing next to the rows."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from doublebind.errors import DoublebindError
from doublebind.reports.study_report import write_report
from doublebind.studies import run as study_run

from .conftest import run_cli
from .test_study import write_study

N_RUNS, N_ROWS = 4, 3  # baseline and verifier_filter x seeds 0, 1; checkpoints 0, 2, 4


@pytest.fixture(scope="module")
def finished(quick_organism, tmp_path_factory):
    """One small finished study (12 rows), copied by each test."""
    root = tmp_path_factory.mktemp("integrity")
    path = write_study(root, quick_organism[0])
    study_run.run_study(path, root / "out", show_progress=False)
    return path, root / "out"


@pytest.fixture
def study(finished, tmp_path):
    path, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return path, copy


def _lines(out):
    return (out / study_run.RESULTS).read_bytes().splitlines(keepends=True)


def _write_lines(out, lines):
    (out / study_run.RESULTS).write_bytes(b"".join(lines))


def _count_distills(monkeypatch):
    import doublebind.training.distill as dmod

    calls = []
    original = dmod.distill

    def counting(*a, **k):
        calls.append(a[2].name)
        return original(*a, **k)

    monkeypatch.setattr(dmod, "distill", counting)
    return calls


def test_finished_study_rows_carry_their_run_checksum(study):
    _, out = study
    rows = study_run.read_results(out / study_run.RESULTS)
    assert len(rows) == N_RUNS * N_ROWS
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    assert len(by_run) == N_RUNS
    for run_rows in by_run.values():
        assert {r["run_rows"] for r in run_rows} == {N_ROWS} and len(run_rows) == N_ROWS
        canon = json.dumps([{k: v for k, v in r.items() if k != "run_sha256"} for r in run_rows],
                           sort_keys=True, separators=(",", ":"))  # the seal, written out here
        assert {r["run_sha256"] for r in run_rows} == {hashlib.sha256(canon.encode()).hexdigest()}
    # and the file's own lines hold it, as read without the reader that checks it
    raw = [json.loads(line) for line in (out / study_run.RESULTS).read_text().splitlines()]
    assert len(raw) == N_RUNS * N_ROWS and all(len(r["run_sha256"]) == 64 for r in raw)


def _garbage(lines, i):
    lines[i] = b'{"schema_version": 3, "technique": "base#!garbage\n'


def _edited_value(lines, i):  # still valid JSON and a well-formed row: only the checksum tells
    row = json.loads(lines[i])
    row["capability_transfer"] = 0.987654
    lines[i] = (json.dumps(row) + "\n").encode()


def _duplicated(lines, i):
    lines.append(lines[i])


@pytest.mark.parametrize("damage, line", [(_garbage, 5), (_edited_value, 5), (_duplicated, 8)])
def test_a_corrupt_line_is_reported_by_number_and_never_deleted(study, damage, line):
    path, out = study
    lines = _lines(out)
    damage(lines, line - 1)
    _write_lines(out, lines)
    before = (out / study_run.RESULTS).read_bytes()

    res = run_cli("report", str(out))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr
    assert re.search(rf"lines? [\d, ]*\b{line}\b[\d, ]* (is|are) corrupt", errors[0]) and "Traceback" not in res.stderr
    assert (out / study_run.RESULTS).read_bytes() == before  # byte-identical
    assert not (out / "report.md").exists() and not (out / study_run.QUARANTINE).exists()

    # resume stops too, keeps the raw file and copies the bad lines beside it (once)
    for _ in range(2):
        with pytest.raises(DoublebindError, match=rf"lines? [\d, ]*\b{line}\b.*corrupt.*copied to {study_run.QUARANTINE}"):
            study_run.run_study(path, out, show_progress=False)
    assert (out / study_run.RESULTS).read_bytes() == before
    quarantined = [json.loads(q) for q in (out / study_run.QUARANTINE).read_text().splitlines()]
    assert line in {q["line"] for q in quarantined} and not any(q["moved"] for q in quarantined)
    assert all(q["raw"].encode() + b"\n" == before.splitlines(keepends=True)[q["line"] - 1] for q in quarantined)
    assert len({q["line"] for q in quarantined}) == len(quarantined)  # not copied twice


@pytest.mark.parametrize("drop", [12, 3])  # the file's last line; the last row of the first run
def test_a_run_missing_rows_at_a_line_boundary_is_incomplete_and_redone(study, monkeypatch, drop):
    path, out = study
    lines = _lines(out)
    lost = json.loads(lines.pop(drop - 1))
    _write_lines(out, lines)
    truncated = (out / study_run.RESULTS).read_bytes()
    key = (lost["technique"], lost["seed"])

    rows = study_run.read_results(out / study_run.RESULTS)
    assert key not in {(r["technique"], r["seed"]) for r in rows} and len(rows) == (N_RUNS - 1) * N_ROWS
    # the report leaves the incomplete run out, says so, and changes nothing
    md = write_report(out)[0].read_text()
    assert f"{N_RUNS - 1} complete runs" in md
    assert f"incomplete run {key[0]} seed {key[1]} on {lost['scenario']} (organism seed {lost['organism_seed']}) " \
           f"({N_ROWS - 1} of its {N_ROWS} rows" in md
    assert (out / study_run.RESULTS).read_bytes() == truncated
    for t in ("baseline", "verifier_filter"):  # its technique's verdict rests on the complete runs only
        n = 1 if key[0] == t else 2
        assert any(ln.startswith(f"| {t} | {n} (1) |") for ln in md.splitlines())

    calls = _count_distills(monkeypatch)
    summary = study_run.run_study(path, out, show_progress=False)
    assert calls == [f"{key[0]}-s{key[1]}"]  # exactly that run, nothing else
    after = (out / study_run.RESULTS).read_bytes()
    assert after.startswith(truncated)  # append-only
    rows = study_run.read_results(out / study_run.RESULTS)
    keys = [(r["technique"], r["seed"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) == N_RUNS * N_ROWS
    assert summary["runs"] == N_RUNS
    assert len(study_run.scan_results(out / study_run.RESULTS).incomplete) == 0
    # the redone run replaced the leftovers; a further resume does nothing
    calls.clear()
    study_run.run_study(path, out, show_progress=False)
    assert calls == [] and (out / study_run.RESULTS).read_bytes() == after


def test_report_ignores_a_stale_summary(study):
    path, out = study
    good = json.loads((out / "summary.json").read_text())
    stale = json.loads(json.dumps(good))
    stale["runs"] = 99
    (scenario,) = good["scenarios"]
    real = good["scenarios"][scenario]["techniques"]["baseline"]["final"]
    fake = stale["scenarios"][scenario]["techniques"]["baseline"]["final"]
    fake_verdict = "both_fail" if real["verdict"] != "both_fail" else "capable_benign"
    fake["verdict"] = fake_verdict
    fake["capability_transfer"]["mean"] = 0.123456
    (out / "summary.json").write_text(json.dumps(stale))
    md = write_report(out)[0].read_text()
    verdict_rows = [ln for ln in md.splitlines() if ln.startswith("| baseline |")]
    cap = real["capability_transfer"]
    assert f"{cap['mean']:.3f} [{cap['ci95'][0]:.3f}" in verdict_rows[0]
    cells = [c.strip() for c in verdict_rows[0].split("|")]
    assert not cells[3].startswith("0.123") and cells[6].startswith(f"[{real['verdict']}](")
    assert f"{N_RUNS} complete runs" in md
    assert "summary.json on disk does not match the rows" in md
    assert json.loads((out / "summary.json").read_text()) == stale  # the report wrote nothing there
    # a resume rewrites it from the rows; a missing summary is no obstacle to the report
    assert study_run.run_study(path, out, show_progress=False) == good
    assert json.loads((out / "summary.json").read_text()) == good
    (out / "summary.json").unlink()
    assert "## Verdicts" in write_report(out)[0].read_text()


def test_a_torn_last_line_is_left_alone_by_report_and_set_aside_by_resume(study, monkeypatch):
    path, out = study
    with open(out / study_run.RESULTS, "ab") as f:
        f.write(b'{"schema_version": 3, "technique": "basel')
    before = (out / study_run.RESULTS).read_bytes()
    md = write_report(out)[0].read_text()
    assert "half-written last line (line 13" in md and f"{N_RUNS} complete runs" in md
    assert (out / study_run.RESULTS).read_bytes() == before
    calls = _count_distills(monkeypatch)
    study_run.run_study(path, out, show_progress=False)
    assert calls == []
    assert before.startswith((out / study_run.RESULTS).read_bytes() + b'{"schema_version": 3')
    q = [json.loads(x) for x in (out / study_run.QUARANTINE).read_text().splitlines()]
    assert q == [{"line": 13, "reason": "half-written last line (a kill mid-append)", "moved": True,
                  "source": study_run.RESULTS, "raw": '{"schema_version": 3, "technique": "basel'}]


def test_a_whole_last_row_without_its_newline_is_kept_not_trained_again(study, monkeypatch, capsys):
    """A write cut off just before its last newline left a whole row: the run was trained again
    and the row quarantined. It is kept (its run's seal checked as any run's), the newline put
    back, and the next row starts a line of its own."""
    path, out = study
    results = out / study_run.RESULTS
    whole, rows = results.read_bytes(), study_run.read_results(results)
    results.write_bytes(whole[:-1])
    assert rows and study_run.read_results(results) == rows  # a reader keeps it too, writing nothing
    assert results.read_bytes() == whole[:-1]
    calls = _count_distills(monkeypatch)
    study_run.run_study(path, out, show_progress=False)
    assert calls == [] and results.read_bytes() == whole and not (out / study_run.QUARANTINE).exists()
    # a torn line is moved aside with a note (it was silent)
    with open(results, "ab") as f:
        f.write(b"\x00\xff" * 150)
    study_run.run_study(path, out, show_progress=False)
    note = capsys.readouterr()
    lines = whole.count(b"\n")
    assert f"line {lines + 1} (300 bytes) was half-written" in note.out + note.err
    assert results.read_bytes() == whole


def test_the_report_says_why_a_results_file_has_no_runs(study, tmp_path):
    """A results.jsonl that is a folder, and one whose only line is half-written, read as "no
    finished runs yet", where `study run` named the folder."""
    _, out = study
    results = out / study_run.RESULTS
    results.unlink()
    results.mkdir()
    res = run_cli("report", str(out))
    assert res.returncode == 1 and f"error: {results} is a folder, not a file" in res.stderr
    results.rmdir()
    results.write_bytes(b"\x00\xff" * 150)
    res = run_cli("report", str(out))
    assert res.returncode == 1 and "no finished runs yet (its last line, 300 bytes, is half-written" in res.stderr


def test_rows_of_an_older_schema_are_refused_in_one_line(study):
    _, out = study
    rows = [json.loads(ln) for ln in _lines(out)]
    for r in rows:
        for k in ("run_id", "run_rows", "run_sha256"):
            r.pop(k)
        r["schema_version"] = 1
    (out / study_run.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("report", str(out))
    assert res.returncode == 1 and "older doublebind" in res.stderr and "Traceback" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [res.stderr.strip()]  # one line
    assert res.stderr.startswith("error:")
    # schema 2 rows had checksums but no scenario or organism seed: refused the same way, not as corrupt
    v2 = [{k: v for k, v in r.items() if k not in ("scenario", "organism_seed")} for r in rows]
    for r in v2:
        r["schema_version"] = 2
    v2 = study_run.seal_run(v2, "baseline-s0-a0")
    (out / study_run.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in v2))
    with pytest.raises(DoublebindError, match="older doublebind"):
        study_run.read_results(out / study_run.RESULTS)


def test_out_that_is_a_file_is_refused(finished, tmp_path):
    path, _ = finished
    (tmp_path / "f").write_text("x")
    with pytest.raises(DoublebindError, match="is a file, not a study folder"):
        study_run.run_study(path, tmp_path / "f", show_progress=False)
    assert (tmp_path / "f").read_text() == "x"


def _prov(commit: str, cpu: str = "CPU A", transformers: str = "5.24.0") -> dict:
    return {"commit": commit, "dirty": False, "organisms": [], "machine": {"cpu": cpu, "cpus": 2},
            "versions": {"transformers": transformers, "torch": "2.13.0"}}


def test_a_resumed_study_keeps_where_its_earlier_runs_came_from(tmp_path, capsys):
    """study.json's provenance was replaced by each session's, even one that ran no run.
    (waiting, claimed): the record until this session finishes a run, and once it has."""
    record = tmp_path / "study.json"
    now = _prov("new", cpu="CPU B")
    both = {"provenance": now}

    def resumed(had_runs=True):
        return study_run.resumed_provenance(record, now, had_runs=had_runs)

    assert resumed() == (both, both)  # no record yet
    record.write_text(json.dumps({"provenance": _prov("old")}))
    assert resumed(had_runs=False) == (both, both)  # no run finished before
    assert resumed() == ({"provenance": _prov("old")}, {"provenance": now, "earlier_provenance": [_prov("old")]})
    same = study_run.resumed_provenance(record, _prov("old"), had_runs=True)
    assert same == ({"provenance": _prov("old")},) * 2
    threads = {**_prov("old"), "machine": {**_prov("old")["machine"], "thread_settings": {"OMP_NUM_THREADS": "4"}}}
    assert study_run.resumed_provenance(record, threads, had_runs=True)[1] == {"provenance": threads}  # not a session
    record.write_text(json.dumps({"provenance": _prov("mid"), "earlier_provenance": [_prov("old")]}))
    waiting, claimed = resumed()
    assert waiting == {"provenance": _prov("mid"), "earlier_provenance": [_prov("old")]}
    assert claimed["earlier_provenance"] == [_prov("old"), _prov("mid")]
    libs = study_run.resumed_provenance(record, _prov("mid", transformers="5.25.0"), had_runs=True)[1]
    assert libs["earlier_provenance"] == [_prov("old"), _prov("mid")]  # libraries count
    capsys.readouterr()
    record.write_text('{"provenance": {"commit": ')
    assert resumed() == (both, both)
    assert capsys.readouterr().err.count("was not a readable study record; rewritten (the damaged file is kept as "
                                         "study.json.unreadable)") == 1
    assert (tmp_path / "study.json.unreadable").read_text() == '{"provenance": {"commit": '  # not lost with it
    record.write_text("[]")
    assert resumed() == (both, both) and (tmp_path / "study.json.unreadable-2").read_text() == "[]"


def test_the_report_lists_the_earlier_sessions_of_a_resumed_study(tmp_path):
    src = Path(__file__).resolve().parent.parent / "docs" / "results"
    d = tmp_path / "s"
    d.mkdir()
    for f in (study_run.RESULTS, "summary.json", "study.json"):
        shutil.copy(src / f, d / f)
    record = json.loads((d / "study.json").read_text())
    record["earlier_provenance"] = [_prov("0123abc", cpu="Some Other CPU")]
    (d / "study.json").write_text(json.dumps(record))
    md, _ = write_report(d)
    text = md.read_text()
    assert "| earlier session 1 | commit 0123abc; cpu Some Other CPU; torch 2.13.0, transformers 5.24.0 |" in text
    assert "This study was resumed" in text


def test_a_session_claims_the_record_only_once_a_run_finishes(quick_organism, tmp_path, monkeypatch):
    """study.json took each session's provenance at its start, so a session that failed
    before finishing a run (or ran none) was credited with the rows of the one before."""
    import doublebind.training.distill as dmod

    from .test_study import write_study

    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0, 1])
    out = tmp_path / "out"
    original = dmod.distill
    calls = []

    def fails_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise DoublebindError("loss became nan at step 1")
        return original(*a, **k)

    monkeypatch.setattr(dmod, "distill", fails_on_second)
    with pytest.raises(DoublebindError):
        study_run.run_study(path, out, show_progress=False)
    record = json.loads((out / "study.json").read_text())
    mine = record["provenance"]
    assert "earlier_provenance" not in record
    other = {**mine, "commit": "another-commit", "machine": {**mine["machine"], "cpu": "Another CPU"}}
    (out / "study.json").write_text(json.dumps({**record, "provenance": other}))  # as another session left it
    calls.clear()
    calls.append(1)  # the next run fails at once: this session finishes none
    with pytest.raises(DoublebindError):
        study_run.run_study(path, out, show_progress=False)
    record = json.loads((out / "study.json").read_text())
    assert record["provenance"] == other and "earlier_provenance" not in record
    monkeypatch.setattr(dmod, "distill", original)
    study_run.run_study(path, out, show_progress=False)  # finishes the last run: claims the record
    record = json.loads((out / "study.json").read_text())
    assert record["provenance"]["commit"] == mine["commit"] and record["earlier_provenance"] == [other]
    study_run.run_study(path, out, show_progress=False)  # nothing left to run: the record stays
    assert json.loads((out / "study.json").read_text()) == record


def _resealed(out, edit, run_index: int = 0):
    """results.jsonl with `edit(row)` applied to every row of one run, its checksum made
    again: a damage the checksum cannot see (a hand edit that knows the formula, another
    tool's rows), which the row checks must."""
    rows = [json.loads(ln) for ln in _lines(out)]
    run_id = list(dict.fromkeys(r["run_id"] for r in rows))[run_index]
    mine = [r for r in rows if r["run_id"] == run_id]
    for r in mine:
        edit(r)
    sealed = study_run.seal_run([{k: v for k, v in r.items() if k not in ("run_id", "run_rows", "run_sha256")}
                                 for r in mine], run_id)
    it = iter(sealed)
    rows = [next(it) if r["run_id"] == run_id else r for r in rows]
    (out / study_run.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _set(key, value):
    def edit(r):
        r[key] = value
    return edit


@pytest.mark.parametrize("edit, why", [
    (_set("capability_transfer", "0.9"), "'capability_transfer' is not a finite number"),
    (_set("misalignment_transfer", True), "'misalignment_transfer' is not a finite number"),
    (_set("misalignment_transfer", float("inf")), "'misalignment_transfer' is not a finite number"),
    (lambda r: r.pop("misalignment_transfer"), "no 'misalignment_transfer'"),
    (lambda r: r["capability"].update(copy="high"), "'capability.copy' is not a finite number"),
    (lambda r: r["auditor"].update(success_at_k=float("nan")) if r["auditor"] else None,
     "'auditor.success_at_k' is not a finite number"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100, "pool_draws": [3, "2"]}),
     "'free_auditor.pool_draws' is not a list of flag counts of its pool's size"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100, "pool_draws": [601]}),
     "'free_auditor.pool_draws' is not a list of flag counts of its pool's size"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "budget": 100, "teacher_pool_draws": [0]}),
     "'free_auditor.teacher_pool_draws' is not a list of flag counts of its pool's size"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100, "teacher_pool_draws": []}),
     "'free_auditor.teacher_pool_draws' is not a list of flag counts of its pool's size"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100, "pool_flagged": [0, 700]}),
     "'free_auditor.pool_flagged' is not a list of flag counts of its pool's size"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100, "pool_flagged": [3, 0]}),
     "'free_auditor.pool_flagged' does not begin with the pool's own 'flagged'"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100, "pool_flagged": [0, 0],
                           "pool_draws": [0, 0, 0]}),
     "'free_auditor.pool_draws' does not hold as many draws for each of its pools"),
    (_set("free_auditor", {"success_at_k": 0.0, "flagged": 0, "n": 600, "budget": 100,
                           "teacher_pool_flagged": [0, 0]}),
     "'free_auditor.teacher_pool_draws' does not hold as many draws for each of its pools"),
    (_set("schema_version", 9), "schema version 9, written by a newer doublebind"),
    (_set("schema_version", "3"), "'schema_version' is not a int"),
    (_set("selected", False), "0 rows marked selected"),
    (_set("selected", True), "3 rows marked selected"),
])
def test_a_row_no_run_writes_is_refused_by_its_line_even_when_resealed(study, edit, why):
    """Values the statistics read (a string transfer, an infinity, a boolean read as 1.0, no
    delivered checkpoint or two) were judged, or ended in an internal error."""
    _, out = study
    _resealed(out, edit)
    with pytest.raises(DoublebindError, match=re.escape(why)):
        study_run.read_results(out / study_run.RESULTS)
    res = run_cli("report", str(out))
    assert res.returncode == 1 and why in res.stderr and "internal error" not in res.stderr
    assert not (out / "report.md").exists()


@pytest.mark.parametrize("edit, why", [
    (_set("study", "matrix"), "is a run of study 'matrix', not 't'"),
    (_set("organism_hash", "ffffffffffffffff"), "ran on organism ffffffffffffffff, not "),
])
def test_report_and_compare_refuse_runs_of_another_study_or_organism(study, edit, why):
    """Such runs were judged with the study's own, under its name, exit 0 (`study run`
    refuses the same folder)."""
    _, out = study
    clean = out.parent / "clean"
    shutil.copytree(out, clean)
    _resealed(out, edit, run_index=1)
    for args in (["report", str(out)], ["study", "compare", str(clean), str(out)]):
        res = run_cli(*args)
        assert res.returncode == 1 and why in res.stderr and "reads one study's runs" in res.stderr, res.stderr
    assert not (out / "report.md").exists()


def test_runs_of_one_seed_with_two_recipes_across_organism_builds_are_refused(study):
    """A run's recipe hash covers its seed, so only runs of the same technique and seed on one
    scenario's builds can be compared without the recipe."""
    from doublebind.reports.study_report import _foreign_run

    _, out = study
    scan = study_run.scan_results(out / study_run.RESULTS)
    key, rows = next(iter(scan.runs.items()))
    twin = (key[0], key[1] + 1, key[2], key[3])
    scan.runs[twin] = [{**r, "organism_seed": twin[1], "recipe_hash": "0" * 16} for r in rows]
    record = json.loads((out / "study.json").read_text())
    record["organisms"].append({**record["organisms"][0], "organism_seed": twin[1]})  # a second build placed
    cfg = study_run.config.build(study_run.config.StudyConfig, record["config"], "study.json")
    assert "ran with different recipes" in _foreign_run(record, cfg, scan)
    scan.runs[twin] = [{**r, "organism_seed": twin[1]} for r in rows]
    assert _foreign_run(record, cfg, scan) is None


def test_weights_that_diverge_after_the_last_loss_stop_the_run_and_keep_results_readable(
        quick_organism, tmp_path, monkeypatch):
    """An update after the last finite loss can leave weights whose evaluation is NaN: the row
    was appended, and results.jsonl then refused itself (a non-finite transfer) on every later
    study run and report. The run now stops at that evaluation; and should a row the file
    cannot hold reach the study anyway, it is refused before it is written."""
    import doublebind.training.distill as dmod

    over = ["recipe_overrides.training.steps=1", "recipe_overrides.training.checkpoint_every=1",
            "recipe_overrides.training.lr=1e39", "seeds=[0]", "techniques=[baseline]"]
    path = write_study(tmp_path, quick_organism[0])
    with pytest.raises(DoublebindError, match=r"the evaluation at step 1 gave .* = nan: the weights diverged; "
                                              r"lower the learning rate"):
        study_run.run_study(path, tmp_path / "a", show_progress=False, overrides=over)
    assert not (tmp_path / "a" / study_run.RESULTS).exists() or not _lines(tmp_path / "a")
    monkeypatch.setattr(dmod, "first_non_finite", lambda row: None)  # the run's own check gone
    with pytest.raises(DoublebindError, match=r"baseline.*gave a row results.jsonl cannot hold \('[a-z_]+' is not a "
                                              r"finite number\); nothing of it was written"):
        study_run.run_study(path, tmp_path / "b", show_progress=False, overrides=over)
    assert not (tmp_path / "b" / study_run.RESULTS).exists() or not _lines(tmp_path / "b")


def test_a_single_organism_study_leaves_out_the_runs_of_an_organism_it_no_longer_places(study):
    """A single-organism study names no scenario: resumed in the same folder on another
    organism (or organism seed), it judged and counted the earlier organism's runs beside the
    new ones, as a second scenario, and the report said so too."""
    path, out = study
    rows = [json.loads(ln) for ln in _lines(out)]
    scenario = rows[0]["scenario"]
    earlier = []
    for run_id in dict.fromkeys(r["run_id"] for r in rows):
        mine = [{k: v for k, v in r.items() if k not in ("run_id", "run_rows", "run_sha256")}
                | {"scenario": "earlier", "organism_hash": "e" * 16} for r in rows if r["run_id"] == run_id]
        earlier += study_run.seal_run(mine, "earlier-" + run_id)
    (out / study_run.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in earlier + rows))
    summary = study_run.run_study(path, out, show_progress=False)  # nothing left to run: the summary again
    assert summary["runs"] == N_RUNS and summary["runs_outside_study"] == N_RUNS
    assert list(summary["scenarios"]) == [scenario]
    assert json.loads((out / "summary.json").read_text())["scenarios"].keys() == {scenario}
    res = run_cli("report", str(out))
    assert res.returncode == 0, res.stderr
    report = (out / "report.md").read_text()
    assert f"Left out: {N_RUNS} complete runs of an earlier grid" in report and "| earlier |" not in report
    assert f"{N_RUNS} complete runs" in res.stdout + report
