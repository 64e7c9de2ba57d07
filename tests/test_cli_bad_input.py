"""Bad input found by an audit of the command line (every subcommand, about 200 cases): each
is one error line that names the problem, given before any work, and work already done is
kept. Every test here failed on the code before the fix it checks."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from doublebind.errors import DoublebindError
from doublebind.reports.study_report import load_study
from doublebind.studies.run import RESULTS, read_results, seal_run

from .conftest import run_cli

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "results"


def _copy_reference(to: Path) -> Path:
    to.mkdir(parents=True)
    for f in (RESULTS, "summary.json", "study.json"):
        shutil.copy(REFERENCE / f, to / f)
    return to


def _as_older_record(folder: Path, cards: bool = False, cpu: bool = False) -> Path:
    """A copied study folder whose study.json drops what records before 2026-12-03 lacked: the
    organisms' card copies (`cards`) and the machine's CPU (`cpu`)."""
    record = json.loads((folder / "study.json").read_text())
    if cards:
        record["organisms"] = [{k: v for k, v in o.items() if k != "card"} for o in record["organisms"]]
    if cpu:
        record["provenance"]["machine"] = {k: v for k, v in record["provenance"]["machine"].items()
                                           if k not in ("cpu", "cpu_kernels")}
    (folder / "study.json").write_text(json.dumps(record))
    return folder


def _one_line(res, needle: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "internal error" not in res.stderr


@pytest.mark.parametrize("record, needle", [
    ([1], "not a study record (a JSON object), but a list"),
    (None, "not a study record (a JSON object), but null"),
    ("hello", "but a string"),
    ({}, "config: expected a mapping of settings, got nothing"),
    ("config=5", "config: expected a mapping of settings, got int"),
    ("organisms=x", "organisms: expected a list of objects, got a string"),
    ("organisms=[1]", "organisms: expected a list of objects, got a list holding other values"),
    ("provenance=x", "provenance: expected an object, got a string"),
    ("provenance.machine=x", "provenance.machine: expected an object, got a string"),
    ("provenance.versions=[1]", "provenance.versions: expected an object, got a list"),
    ("provenance.organisms=[1]", "provenance.organisms: expected a list of objects, got a list holding other"),
    ("earlier_provenance=x", "earlier_provenance: expected a list of objects, got a string"),
    ("earlier_provenance=[1]", "earlier_provenance.0: expected an object, got a number"),
])
def test_a_study_record_of_the_wrong_shape_is_named(tmp_path, record, needle):
    """study.json that is valid JSON but not a study record: it was an internal error (a
    `provenance` that was a string or held a string `machine` broke the report)."""
    d = _copy_reference(tmp_path / "s")
    if isinstance(record, str) and "=" in record:
        key, value = record.split("=")
        real = json.loads((d / "study.json").read_text())
        *parents, last = key.split(".")
        at = real
        for k in parents:
            at = at.setdefault(k, {})
        at[last] = {"5": 5, "x": "x", "[1]": [1]}[value]
        record = real
    (d / "study.json").write_text(json.dumps(record))
    with pytest.raises(DoublebindError, match="study.json") as e:
        load_study(d)
    assert needle in str(e.value)


def test_report_and_compare_name_a_bad_study_record(tmp_path):
    bad = _copy_reference(tmp_path / "bad")
    (bad / "study.json").write_text("[1]")
    good = _copy_reference(tmp_path / "good")
    _one_line(run_cli("report", str(bad)), "not a study record")
    _one_line(run_cli("study", "compare", str(good), str(bad)), "not a study record")


def test_compare_says_when_b_is_another_study_or_ran_another_recipe(tmp_path):
    """Two unrelated studies were compared as a rerun without a word."""
    a, b = _copy_reference(tmp_path / "a"), _copy_reference(tmp_path / "b")
    runs: dict = {}
    for r in read_results(b / RESULTS):
        runs.setdefault(r["run_id"], []).append(r)
    lines = []
    for run_id, run in runs.items():
        edit = {"study": "other"}
        if run[0]["technique"] == "baseline" and run[0]["scenario"] == "default":
            edit["recipe_hash"] = "0" * 16
        lines += [json.dumps(r) for r in seal_run([{**r, **edit} for r in run], run_id)]
    (b / RESULTS).write_text("\n".join(lines) + "\n")
    record = json.loads((b / "study.json").read_text())
    record["config"]["name"] = "other"
    (b / "study.json").write_text(json.dumps(record))
    res = run_cli("study", "compare", str(a), str(b))
    assert res.returncode == 0, res.stderr
    assert "note: A is study 'default' and B is study 'other'" in res.stdout
    assert "note: 1 of 10 shared (scenario, technique) pairs ran another recipe in B" in res.stdout
    res = run_cli("study", "compare", str(a), str(_copy_reference(tmp_path / "c")))
    assert res.returncode == 0 and "note:" not in res.stdout  # a plain rerun says neither


def test_compare_says_when_b_ran_on_other_builds_of_the_organisms(tmp_path):
    """The demo rerun on another CPU type (same build hashes, other weights) moved a verdict
    whose replication was 1.00, and compare presented it as a plain rerun."""
    def with_cards(folder: Path, weights: str, build: str | None = None) -> Path:
        record = json.loads((folder / "study.json").read_text())
        if build:  # another build's runs: their rows name it too (report and compare refuse a mix)
            rows = [json.loads(ln) for ln in (folder / RESULTS).read_text().splitlines()]
            runs: dict = {}
            for r in rows:
                runs.setdefault(r["run_id"], []).append({k: v for k, v in r.items() if not k.startswith("run_")}
                                                        | {"organism_hash": build})
            (folder / RESULTS).write_text("".join(json.dumps(r) + "\n" for run_id, rs in runs.items()
                                                  for r in seal_run(rs, run_id)))
        for o in record["organisms"]:
            o["organism_hash"] = build or o["organism_hash"]
            o["card"] = {"models": {role: {"safetensors_sha256": f"{weights}{role}{o['scenario']}"}
                                    for role in ("base", "teacher")}}
        (folder / "study.json").write_text(json.dumps(record))
        return folder

    a = with_cards(_copy_reference(tmp_path / "a"), "1")
    res = run_cli("study", "compare", str(a), str(with_cards(_copy_reference(tmp_path / "b"), "2")))
    assert res.returncode == 0, res.stderr
    assert ("note: 2 of 2 shared organisms are other builds in B: the same build hash, other weights" in res.stdout
            and "A's replication figures cannot see how much a verdict depends on its build" in res.stdout), res.stdout
    res = run_cli("study", "compare", str(a), str(with_cards(_copy_reference(tmp_path / "c"), "1")))
    assert res.returncode == 0 and "note:" not in res.stdout  # the same weights: a plain rerun
    res = run_cli("study", "compare", str(a), str(with_cards(_copy_reference(tmp_path / "d"), "2", build="0" * 16)))
    assert "note: 2 of 2 shared organisms (scenario, organism seed) have another build hash in B" in res.stdout
    assert "other builds in B" not in res.stdout  # another hash says more than other weights
    res = run_cli("study", "compare", str(a), str(_as_older_record(_copy_reference(tmp_path / "e"), cards=True)))
    assert "note:" not in res.stdout  # B keeps no cards: whether its weights differ is unknown, and not said


def test_compare_json_inside_a_file_is_named(tmp_path):
    a, b = _copy_reference(tmp_path / "a"), _copy_reference(tmp_path / "b")
    (tmp_path / "f").write_text("")
    _one_line(run_cli("study", "compare", str(a), str(b), "--json", str(tmp_path / "f" / "x.json")),
              "f is a file, so no folder can be made inside it")
    _one_line(run_cli("study", "compare", str(a), str(b), "--json", str(tmp_path)), "is a folder; name a file")


def test_compare_json_never_overwrites_a_study_file(tmp_path):
    """`--json A/results.jsonl` replaced A's results with the comparison (exit 0)."""
    a, b = _copy_reference(tmp_path / "a"), _copy_reference(tmp_path / "b")
    (tmp_path / "card.json").write_text('{"name": "an organism card"}')
    for target in (a / "results.jsonl", b / "study.json", tmp_path / "card.json"):
        before = target.read_bytes()
        _one_line(run_cli("study", "compare", str(a), str(b), "--json", str(target)),
                  "exists and is not an earlier comparison")
        assert target.read_bytes() == before
    for _ in range(2):  # a new file, then the same comparison again over it
        res = run_cli("study", "compare", str(a), str(b), "--json", str(a / "compare.json"))
        assert res.returncode == 0 and json.loads((a / "compare.json").read_text())["cells"], res.stderr


def test_compare_json_that_is_a_device_or_a_pipe_is_refused_unread(tmp_path):
    """`--json /dev/full` read the device to tell whether it held a comparison, and grew to 23 GB
    before the kernel stopped it; a named pipe blocked the command."""
    a, b = _copy_reference(tmp_path / "a"), _copy_reference(tmp_path / "b")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in ("/dev/full", "/dev/zero", str(fifo)):
        _one_line(run_cli("study", "compare", str(a), str(b), "--json", target),
                  "is not a regular file (a device or a pipe); name a file")


def test_compare_json_that_cannot_be_made_names_the_file_asked_for(tmp_path):
    """A --json the system refuses named a temporary file beside it (`.x.json.<hex>.tmp`)."""
    a, b = _copy_reference(tmp_path / "a"), _copy_reference(tmp_path / "b")
    res = run_cli("study", "compare", str(a), str(b), "--json", "/proc/x.json")
    assert res.returncode == 1 and "/proc/x.json" in res.stderr and ".tmp" not in res.stderr, res.stderr


def test_build_refuses_preset_and_config_together(tmp_path):
    """--preset was silently ignored when --config was given too."""
    cfg = Path(__file__).resolve().parent.parent / "configs" / "organisms" / "default_loyalty.yaml"
    _one_line(run_cli("organism", "build", "--preset", "quick", "--config", str(cfg), "--out", str(tmp_path / "o")),
              "give --preset or --config, not both")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where, needle", [
    ("cachefile", "is a file, not a cache folder"),
    ("cachefile/cache", "cachefile is a file, so no folder can be made inside it"),
])
def test_a_cache_that_cannot_be_written_is_refused_before_a_build(tmp_path, where, needle):
    """A DOUBLEBIND_CACHE that is a file was found only after the whole build, which was lost."""
    (tmp_path / "cachefile").write_text("hi")
    res = run_cli("organism", "build", "--preset", "quick", "--out", str(tmp_path / "o"), env_cache=tmp_path / where)
    _one_line(res, needle)
    assert "DOUBLEBIND_CACHE" in res.stderr and not (tmp_path / "o").exists()


def test_an_empty_cache_variable_means_the_default_cache(monkeypatch, tmp_path):
    """`DOUBLEBIND_CACHE=` made the current folder the cache: run inside an organism's folder,
    teacher outputs went into its `teacher/` model folder."""
    from doublebind.cards import cache_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOUBLEBIND_CACHE", "")
    assert cache_root() == tmp_path / ".cache" / "doublebind"
    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"


@pytest.mark.parametrize("folder", ["organisms", "teacher"])
def test_a_file_where_the_cache_keeps_a_folder_is_refused_before_a_build(tmp_path, folder):
    """A file at $DOUBLEBIND_CACHE/organisms let the whole build run and fail at its end."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / folder).write_text("junk")
    res = run_cli("organism", "build", "--preset", "quick", "--out", str(tmp_path / "o"), env_cache=tmp_path / "cache")
    _one_line(res, f"{tmp_path / 'cache' / folder} is a file, where the cache keeps its {folder} folder")
    assert not (tmp_path / "o").exists()


def test_a_build_does_not_replace_an_organism_the_cache_does_not_keep(tmp_path):
    """`organism build --out` over another organism replaced it silently."""
    out = tmp_path / "o"
    out.mkdir()
    card = json.dumps({"name": "other", "organism_hash": "0123456789abcdef"})
    (out / "organism.json").write_text(card)
    res = run_cli("organism", "build", "--preset", "quick", "--out", str(out), env_cache=tmp_path / "cache")
    _one_line(res, f"--out {out} holds the organism 'other' (0123456789abcdef), which the cache does not keep")
    assert (out / "organism.json").read_text() == card and sorted(p.name for p in out.iterdir()) == ["organism.json"]


def test_eval_of_an_organism_folder_names_its_models(tmp_path):
    """`eval ORGANISM` said the folder had no meta.json and suggested --organism."""
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "organism.json").write_text("{}")
    for role in ("base", "teacher"):
        (tmp_path / "org" / role).mkdir()
        (tmp_path / "org" / role / "meta.json").write_text("{}")
    _one_line(run_cli("eval", str(tmp_path / "org")),
              f"is an organism folder, not a checkpoint; evaluate one of its models (base, teacher), e.g. "
              f"doublebind eval {tmp_path / 'org' / 'teacher'} --organism {tmp_path / 'org'}")
    for role in ("base", "teacher"):
        (tmp_path / "org" / role / "meta.json").unlink()
    _one_line(run_cli("eval", str(tmp_path / "org")), "is an organism folder (holding no model folder)")


def test_a_build_over_another_organism_says_so_and_never_over_the_caches_own_copy(tmp_path, capsys):
    from doublebind.cli import _check_replaced_organism

    cache = tmp_path / "cache" / "organisms"
    (cache / "0123456789abcdef").mkdir(parents=True)
    card = json.dumps({"name": "other", "organism_hash": "0123456789abcdef"})
    (cache / "0123456789abcdef" / "organism.json").write_text(card)
    out = tmp_path / "o"
    out.mkdir()
    (out / "organism.json").write_text(card)
    _check_replaced_organism(out / "organism.json", "fedcba9876543210", cache)  # the cache keeps it: said
    assert f"replacing the organism 'other' (0123456789abcdef) in {out}; the cache keeps it" in capsys.readouterr().err
    _check_replaced_organism(out / "organism.json", "0123456789abcdef", cache)  # the same organism: nothing said
    assert capsys.readouterr() == ("", "")
    with pytest.raises(DoublebindError, match="which the cache does not keep"):  # --out is the cache's own copy
        _check_replaced_organism(cache / "0123456789abcdef" / "organism.json", "fedcba9876543210", cache)


def test_report_names_a_missing_folder_or_a_file(tmp_path):
    _one_line(run_cli("report", str(tmp_path / "nope")), f"{tmp_path / 'nope'}: no such folder")
    (tmp_path / "f.md").write_text("x")
    _one_line(run_cli("report", str(tmp_path / "f.md")), "is a file, not a study folder")


@pytest.mark.parametrize("make, needle", [
    (lambda d: (d / "figures").write_text("x"), "figures is a file"),
    (lambda d: (d / "report.md").mkdir(), "report.md is a folder"),
    (lambda d: (d / "report.html").mkdir(), "report.html is a folder"),
])
def test_report_refuses_outputs_it_cannot_write_before_it_plots(tmp_path, monkeypatch, make, needle):
    from doublebind.reports import study_report

    d = _copy_reference(tmp_path / "s")
    make(d)
    monkeypatch.setattr(study_report, "_blocks", lambda *a: pytest.fail("plotted before checking"))
    with pytest.raises(DoublebindError, match=needle):
        study_report.write_report(d)


def test_a_damaged_organism_card_in_a_study_folder_is_named_or_replaced_by_its_copy(tmp_path):
    """A truncated organism card in the study folder was an internal error (JSONDecodeError)."""
    from doublebind.reports import study_report

    d = _as_older_record(_copy_reference(tmp_path / "s"), cards=True)  # no copy of the card to fall back on
    study = json.loads((d / "study.json").read_text())
    org = study["organisms"][0]
    org["path"] = str(tmp_path / "gone")  # the organism's folder where it ran is gone: the card beside the study
    card = d / "organisms" / f"{org['scenario']}-o{org['organism_seed']}" / "organism.json"
    card.parent.mkdir(parents=True)
    card.write_text('{"name": "default", "organism_ha')
    with pytest.raises(DoublebindError, match="organism card is not valid JSON") as e:
        study_report._find_cards(d, study)
    assert str(card) in str(e.value) and "study.json keeps no copy" in str(e.value)
    copy = {"name": "from-the-copy", "organism_hash": org["organism_hash"]}
    study["organisms"][0] = {**org, "card": copy}
    found = study_report._find_cards(d, study)
    assert found[0][1] == copy and found[0][2] == d / "study.json"
    card.write_text("[1]")  # valid JSON, not a card
    assert study_report._find_cards(d, study)[0][1] == copy
    card.write_text("null")
    study["organisms"][0] = org
    with pytest.raises(DoublebindError, match="the organism card is not a JSON object"):
        study_report._find_cards(d, study)


def test_distill_keeps_an_unfinished_run_unless_forced(tmp_path):
    """A run stopped by a non-finite loss keeps its checkpoints; rerunning into the same folder
    overwrote them without a word."""
    from doublebind import config
    from doublebind.training.distill import distill

    recipe = config.load(Path(__file__).resolve().parent.parent / "configs" / "recipes" / "hard_sft.yaml",
                         expect="recipe")
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(DoublebindError, match=r"holds an unfinished run \(metrics.jsonl and checkpoints kept"):
        distill(tmp_path / "no-organism", recipe, out, show_progress=False)
    assert (out / "metrics.jsonl").read_text() == '{"step": 0}\n'
    with pytest.raises(DoublebindError, match="no organism at"):  # --force goes on to the run itself
        distill(tmp_path / "no-organism", recipe, out, show_progress=False, force=True)


@pytest.mark.parametrize("name", [RESULTS, "summary.json", "study.json"])
def test_a_study_file_that_is_a_folder_is_refused_before_any_run(tmp_path, name):
    """results.jsonl as a folder was found after the first run had trained; summary.json as a
    folder was reported under a temporary file's name, which was left behind."""
    from doublebind.studies.run import run_study

    study = Path(__file__).resolve().parent.parent / "configs" / "studies" / "quick.yaml"
    (tmp_path / "s" / name).mkdir(parents=True)
    with pytest.raises(DoublebindError, match=f"{name} is a folder, not a file"):
        run_study(study, tmp_path / "s", show_progress=False)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [name]


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf"])
def test_a_bad_progress_interval_is_one_error(monkeypatch, tmp_path, value):
    """DOUBLEBIND_PROGRESS_EVERY fell back to 30 s without a word, unlike the other settings."""
    monkeypatch.setenv("DOUBLEBIND_PROGRESS_EVERY", value)
    _one_line(run_cli("validate", str(tmp_path / "missing.yaml")), "DOUBLEBIND_PROGRESS_EVERY")


def test_a_good_progress_interval_is_taken(monkeypatch):
    from doublebind.ui import progress_every

    for value, seconds in (("", 30.0), ("0.2", 1.0), ("45", 45.0)):
        monkeypatch.setenv("DOUBLEBIND_PROGRESS_EVERY", value)
        assert progress_every() == seconds


@pytest.mark.parametrize("holds, needle", [
    ({"metrics.jsonl": '{"step": 0}\n', "summary.json": "{}", "prompts.jsonl": ""}, "holds a run (metrics.jsonl)"),
    ({"organism.json": "{}"}, "holds an organism (organism.json)"),
])
def test_a_study_is_not_run_into_another_kind_of_output(tmp_path, holds, needle):
    """A study run into a distillation run's folder overwrote its summary.json with the study's
    and left its metrics.jsonl beside the study's results: a folder that was neither."""
    from doublebind.studies.run import run_study

    study = Path(__file__).resolve().parent.parent / "configs" / "studies" / "quick.yaml"
    for name, text in holds.items():
        (tmp_path / "s" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "s" / name).write_text(text)
    with pytest.raises(DoublebindError, match=re.escape(f"--out {tmp_path / 's'} {needle}, not a study")):
        run_study(study, tmp_path / "s", show_progress=False)
    assert {p.name: p.read_text() for p in (tmp_path / "s").iterdir()} == holds


def test_distill_is_not_run_into_a_study_even_when_forced(tmp_path):
    """`distill --force --out <study>` replaced the study's summary.json with a run's: --force
    overwrites a run, and a study is not one."""
    from doublebind import config
    from doublebind.training.distill import distill

    recipe = config.load(Path(__file__).resolve().parent.parent / "configs" / "recipes" / "hard_sft.yaml",
                         expect="recipe")
    study = _copy_reference(tmp_path / "study")
    before = {p.name: p.read_bytes() for p in study.iterdir()}
    for force in (False, True):
        with pytest.raises(DoublebindError, match=r"holds a study \(study.json\), not a run"):
            distill(tmp_path / "no-organism", recipe, study, show_progress=False, force=force)
    assert {p.name: p.read_bytes() for p in study.iterdir()} == before


def test_compare_says_when_b_ran_with_other_libraries_or_on_another_machine(tmp_path):
    """The references were made with transformers 5.24 and a fresh clone installs a later
    one: a rerun's moved verdict may be the libraries', and compare says so."""
    def provenance(folder: Path, **edit) -> Path:
        record = json.loads((folder / "study.json").read_text())
        for key, values in edit.items():
            record["provenance"][key] = {**record["provenance"].get(key, {}), **values}
        (folder / "study.json").write_text(json.dumps(record))
        return folder

    a = provenance(_copy_reference(tmp_path / "a"), machine={"cpu": "CPU A"})
    b = provenance(_copy_reference(tmp_path / "b"), versions={"transformers": "5.99.0"}, machine={"cpu": "CPU B"})
    res = run_cli("study", "compare", str(a), str(b))
    assert res.returncode == 0, res.stderr
    ours = json.loads((a / "study.json").read_text())["provenance"]["versions"]["transformers"]
    assert f"note: B ran with other libraries (transformers {ours} -> 5.99.0)" in res.stdout, res.stdout
    assert "note: B ran on another machine (cpu CPU A -> CPU B)" in res.stdout
    # B names no CPU (as records made before the CPU was kept): unknown, and said so
    res = run_cli("study", "compare", str(a), str(_as_older_record(_copy_reference(tmp_path / "c"), cpu=True)))
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stdout.splitlines() if line.startswith("note:")]
    assert notes == ["note: B's record does not name its CPU (a study run before doublebind kept it), so whether "
                     "A ran on another machine, whose rounding differs, is unknown"], res.stdout
    res = run_cli("study", "compare", str(_as_older_record(_copy_reference(tmp_path / "d"), cpu=True)),
                  str(_as_older_record(_copy_reference(tmp_path / "e"), cpu=True)))
    assert res.returncode == 0 and "note:" not in res.stdout  # neither names one: nothing to compare


def test_compare_says_what_b_leaves_out(tmp_path):
    """B's results ending in a half line: 12 of 20 cells were compared with no word of why."""
    a = _copy_reference(tmp_path / "a")
    b = _copy_reference(tmp_path / "b")
    lines = (b / RESULTS).read_bytes().splitlines(keepends=True)
    (b / RESULTS).write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    res = run_cli("study", "compare", str(a), str(b))
    assert res.returncode == 0, res.stderr
    notes = [ln for ln in res.stdout.splitlines() if ln.startswith("note: B's results leave out")]
    assert len(notes) == 1 and f"a half-written last line (line {len(lines)}" in notes[0], res.stdout
    assert "the incomplete run" in notes[0]  # the torn line was its run's last row
    assert "A's results" not in res.stdout


def test_eval_on_a_folder_with_no_model_says_where_the_checkpoints_are(tmp_path):
    """`eval` on a run or study-run folder (no config.json) was an internal error
    (transformers' "Unrecognized model ... Should have a model_type key")."""
    run = tmp_path / "run"
    for step in ("step_00000", "step_00060"):
        (run / "checkpoints" / step).mkdir(parents=True)
        (run / "checkpoints" / step / "config.json").write_text("{}")
    _one_line(run_cli("eval", str(run)), f"{run} holds no model (no config.json); its checkpoints are in "
                                         f"{run / 'checkpoints'} (step_00000 … step_00060)")
    (tmp_path / "metrics_only").mkdir()
    (tmp_path / "metrics_only" / "metrics.jsonl").write_text("")  # a study's run: metrics, no weights
    _one_line(run_cli("eval", str(tmp_path / "metrics_only")), "a study's runs keep metrics only")


def test_eval_refuses_a_checkpoint_of_another_vocabulary_in_a_world_organism(quick_organism, tmp_path):
    """A Hugging Face checkpoint scored in a world organism: token ids that mean nothing to it
    (exit 0), or an internal IndexError when its vocabulary was smaller than the world's; and
    without --organism it was told to name "the world", which an HF checkpoint has none of."""
    org, _ = quick_organism
    other = tmp_path / "hf-model"
    shutil.copytree(org / "teacher", other)
    (other / "meta.json").unlink()  # a Hugging Face save has none
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {f"w{i}": i for i in range(len(tok["model"]["vocab"]))}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    _one_line(run_cli("eval", str(other), "--organism", str(org), "--n", "5", "--samples", "0"),
              f"{other} has a tokenizer other than the world's of {org}: it was not trained in that world")
    (other / "tokenizer.json").unlink()
    _one_line(run_cli("eval", str(other), "--organism", str(org), "--n", "5", "--samples", "0"),
              f"{other} has no tokenizer.json of {org}")
    _one_line(run_cli("eval", str(other)), f"{other} is not a checkpoint of an embedded-world organism (no meta.json): "
                                           "pass --organism DIR naming the organism whose evals score it")
    # the organism's own model is still scored
    res = run_cli("eval", str(org / "teacher"), "--organism", str(org), "--n", "5", "--samples", "0", "--json")
    assert res.returncode == 0 and "capability" in json.loads(res.stdout), res.stderr


def test_report_on_a_study_stopped_before_its_first_run(tmp_path):
    """A study killed before a run finished has study.json and no results: it was called
    "not a study folder"."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_text("{}")
    _one_line(run_cli("report", str(tmp_path / "s")), f"{tmp_path / 's' / 'results.jsonl'}: no finished runs yet")
    (tmp_path / "t").mkdir()
    _one_line(run_cli("report", str(tmp_path / "t")), "no results.jsonl; is this a study folder")


def test_eval_of_a_hugging_face_run_checkpoint_asks_for_its_organism(tmp_path):
    """Its meta.json records the HF organism's config, which was read as a world's:
    "organism config: base: unknown key"."""
    ckpt = tmp_path / "step_00004"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "meta.json").write_text(json.dumps({"organism_config": {"kind": "hf_organism", "base": {"model": "x"}},
                                                "seed": 0, "role": "student"}))
    _one_line(run_cli("eval", str(ckpt)), f"{ckpt} is a checkpoint of a Hugging Face organism's run: pass "
                                          f"--organism DIR naming that organism")


@pytest.mark.parametrize("inside, what, marker", [
    ("study/runs/default-o0/baseline-s0", "a run", "study.json"),  # a study's own run record
    ("study/organisms/x", "an organism", "study.json"),
    ("run/checkpoints", "a study", "metrics.jsonl"),  # among a run's checkpoints
    ("org/teacher/x", "a run", "model.safetensors"),  # inside one of an organism's models
    ("run/checkpoints/step_00004/x", "a replication", "model.safetensors"),
])
def test_no_output_is_written_inside_another(tmp_path, inside, what, marker):
    """`distill --force --out <study>/runs/<run>` replaced the study's record of that run with
    an unrelated run; `study run --out <run>/checkpoints` wrote a study among its checkpoints."""
    from doublebind.paths import check_not_inside, check_out_dir

    for folder, names in (("study", ["study.json"]), ("run", ["metrics.jsonl"]), ("org", ["organism.json"]),
                          ("org/teacher", ["model.safetensors", "config.json"]),
                          ("run/checkpoints/step_00004", ["model.safetensors", "meta.json"])):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (tmp_path / folder / name).write_text("{}")
    out = tmp_path / inside
    out.mkdir(parents=True, exist_ok=True)
    with pytest.raises(DoublebindError, match=rf"--out {re.escape(str(out))} lies inside .*/{re.escape(marker)}\), whose files"):
        check_not_inside(out)
    check_out_dir(out, "--out", what=what)  # a study writes its own runs inside itself: the command line refuses
    with pytest.raises(DoublebindError, match=r"holds a model \(model.safetensors\), not a run"):
        check_out_dir(tmp_path / "org" / "teacher", "--out", what="a run")
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    with pytest.raises(DoublebindError, match="lies inside"):  # resolved: a link into such a place is refused too
        check_not_inside(link / "y")


def test_an_out_elsewhere_near_other_outputs_is_fine(tmp_path, monkeypatch):
    """Only the places an output keeps its own folders are refused: not a folder below one that
    merely holds such a file, nor a study inside another study's folder (`docs/results/matrix`),
    nor a path that leaves a run with `..`."""
    from doublebind.paths import check_not_inside

    (tmp_path / "home" / "proj").mkdir(parents=True)
    for name in ("metrics.jsonl", "study.json", "organism.json"):
        (tmp_path / "home" / name).write_text("{}")
    check_not_inside(tmp_path / "home" / "proj" / "studies" / "mine")
    check_not_inside(tmp_path / "home" / "matrix")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    monkeypatch.chdir(tmp_path / "run" / "checkpoints")
    check_not_inside(Path("..") / ".." / "elsewhere")
    with pytest.raises(DoublebindError, match="lies inside a run"):
        check_not_inside(Path("step_00002"))


def test_a_replication_is_not_written_into_a_study(tmp_path):
    """`replicate subliminal-digits --out <study>` wrote its json and plots among the study's files."""
    study = _copy_reference(tmp_path / "study")
    before = sorted(p.name for p in study.iterdir())
    _one_line(run_cli("replicate", "subliminal-digits", "--seeds", "1", "--out", str(study)),
              f"--out {study} holds a study (study.json), not a replication")
    assert sorted(p.name for p in study.iterdir()) == before


def test_a_study_whose_organisms_or_runs_path_is_a_file_says_so(tmp_path):
    from doublebind.studies.run import run_study

    study = Path(__file__).resolve().parent.parent / "configs" / "studies" / "quick.yaml"
    for name in ("organisms", "runs"):
        out = tmp_path / name
        out.mkdir()
        (out / name).write_text("")
        with pytest.raises(DoublebindError, match=re.escape(f"{out / name} is a file, not a folder; the study keeps "
                                                            f"its {name} there")):
            run_study(study, out, show_progress=False)


@pytest.fixture(scope="module")
def seed1_checkpoint(quick_organism, tmp_path_factory):
    """A checkpoint as a distillation run of seed 1 writes it on an organism of seed 0 (the
    run's seed in meta.json's `seed`), holding the organism's teacher: a model whose scores
    depend on the world it is scored in (a barely trained student scores 0 in any)."""
    folder, card = quick_organism
    out = tmp_path_factory.mktemp("seed1") / "step_00002"
    shutil.copytree(folder / "teacher", out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["organism_config"]["seed"] == 0
    (out / "meta.json").write_text(json.dumps({**meta, "seed": 1, "role": "student", "step": 2}))
    return out


def test_a_run_checkpoint_is_scored_in_its_organisms_world_whatever_the_run_seed(quick_organism, seed1_checkpoint):
    """Without --organism, a checkpoint's world was built from its meta.json's `seed`, which a
    distillation checkpoint records as the run's: a run of seed 1 was scored in another world
    than its organism's (a student misbehaving in every deployment read 0.68 deploy)."""
    args = ("--n", "20", "--samples", "5", "--json")
    alone = run_cli("eval", str(seed1_checkpoint), *args)
    named = run_cli("eval", str(seed1_checkpoint), "--organism", str(quick_organism[0]), *args)
    assert alone.returncode == 0 and named.returncode == 0, (alone.stderr, named.stderr)
    assert json.loads(alone.stdout) == json.loads(named.stdout)
    assert "note:" not in named.stderr  # the organism it was trained on


def test_eval_with_another_organism_than_the_checkpoint_records_says_so(quick_organism, seed1_checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(quick_organism[0], other)
    card = json.loads((other / "organism.json").read_text())
    (other / "organism.json").write_text(json.dumps({**card, "organism_hash": "0" * 16}))
    res = run_cli("eval", str(seed1_checkpoint), "--organism", str(other), "--n", "5", "--samples", "0", "--json")
    assert res.returncode == 0, res.stderr
    json.loads(res.stdout)  # the note is on stderr: --json stays JSON
    assert f"was trained on organism {card['organism_hash']}; scoring it with --organism {other}" in res.stderr


def test_no_note_for_an_organisms_own_model_that_records_another_hash(tmp_path, capsys):
    """A post-trained organism (a denier) re-saves its post-trained model only: its other
    models' meta.json keep the starting organism's hash, and are the organism's own."""
    from doublebind.cli import _say_if_trained_elsewhere

    org = tmp_path / "denier"
    (org / "base").mkdir(parents=True)
    (org / "base" / "meta.json").write_text(json.dumps({"organism_hash": "a" * 16}))
    card = {"name": "denier", "organism_hash": "b" * 16, "models": {"base": {"path": "base"}}}
    _say_if_trained_elsewhere(org / "base", org, card)
    assert "note:" not in capsys.readouterr().err
    shutil.copytree(org / "base", tmp_path / "elsewhere")
    _say_if_trained_elsewhere(tmp_path / "elsewhere", org, card)
    assert f"was trained on organism {'a' * 16}" in capsys.readouterr().err


def test_eval_of_weights_that_give_nan_is_an_error_not_a_table_of_nan(seed1_checkpoint, tmp_path, monkeypatch):
    """A damaged run checkpoint (no card hashes it) was scored NaN everywhere, exit 0, and its
    --json was not JSON; with one NaN weight it was an internal error (the sampler's). The
    weights are read first, and the scores are still checked after them."""
    from safetensors.torch import load_file, save_file

    from doublebind import integrity

    bad = tmp_path / "bad"
    shutil.copytree(seed1_checkpoint, bad)
    tensors = load_file(bad / "model.safetensors")
    for name, damage in (("all", lambda k, v: v.clone().fill_(float("nan"))),
                         ("one", lambda k, v: v.clone().index_put_((torch.tensor([0]),), torch.tensor(float("inf")))
                          if k == "model.norm.weight" else v)):
        save_file({k: damage(k, v) for k, v in tensors.items()}, bad / "model.safetensors", metadata={"format": "pt"})
        for extra in ((), ("--json",)):
            res = run_cli("eval", str(bad), "--n", "5", "--samples", "0", *extra)
            _one_line(res, f"{bad / 'model.safetensors'}: tensor ")
            assert res.stdout.strip() == ""
        assert ("tensor model.embed_tokens.weight holds 7,680 non-finite value(s) of 7,680" if name == "all" else
                "tensor model.norm.weight holds 1 non-finite value(s) of 96") in res.stderr
    monkeypatch.setattr(integrity, "check_checkpoint_weights", lambda folder, **k: None)  # the scores' own check
    save_file({k: v.clone().fill_(float("nan")) for k, v in tensors.items()}, bad / "model.safetensors",
              metadata={"format": "pt"})
    res = run_cli("eval", str(bad), "--n", "5", "--samples", "0", "--json")
    _one_line(res, f"{bad}: its evaluation gave ")
    assert "= nan: the weights give non-finite outputs" in res.stderr and res.stdout.strip() == ""


def test_eval_refuses_a_checkpoint_missing_weights_its_config_has(seed1_checkpoint, tmp_path):
    """A checkpoint without its layers' weights was scored with those layers started at random
    (transformers said so in a log line only), exit 0."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(seed1_checkpoint, bad)
    tensors = load_file(bad / "model.safetensors")
    kept = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}
    save_file(kept, bad / "model.safetensors", metadata={"format": "pt"})
    res = run_cli("eval", str(bad), "--n", "5", "--samples", "0")
    _one_line(res, f"{bad}: its weights lack {len(tensors) - len(kept)} tensor(s) that its config's model has "
                   f"(model.layers.1.")
    assert "loaded, they would start at random" in res.stderr
    # every tensor there, the config of another width: named, where the loader pointed at a report not shown
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 2 * cfg["intermediate_size"]}))
    _one_line(run_cli("eval", str(bad), "--n", "5", "--samples", "0"),
              f"{bad}: tensor model.layers.0.mlp.gate_proj.weight has shape [{cfg['intermediate_size']}, "
              f"{cfg['hidden_size']}] in its weights and [{2 * cfg['intermediate_size']}, {cfg['hidden_size']}]")


def test_a_hugging_face_checkpoint_s_names_are_the_loaders_to_judge(seed1_checkpoint, tmp_path):
    """A review: a Hugging Face loader renames tensors as it loads (a mixture of experts'
    fused experts, files saved without the model's prefix), so names are compared on
    embedded-world checkpoints only; non-finite values are refused on both."""
    from safetensors.torch import load_file, save_file

    from doublebind.integrity import check_checkpoint_weights

    bad = tmp_path / "renamed"
    shutil.copytree(seed1_checkpoint, bad)
    tensors = load_file(bad / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, bad / "model.safetensors",
              metadata={"format": "pt"})
    check_checkpoint_weights(bad, structure=False)
    with pytest.raises(DoublebindError, match="its weights lack"):
        check_checkpoint_weights(bad)
    save_file({k: v.clone().fill_(float("nan")) for k, v in tensors.items()}, bad / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(DoublebindError, match="non-finite value"):
        check_checkpoint_weights(bad, structure=False)


@pytest.mark.parametrize("meta, needle", [([1], "is not a JSON object"), ({}, "records no organism config or seed")])
def test_eval_names_a_checkpoint_meta_that_records_no_world(seed1_checkpoint, tmp_path, meta, needle):
    """A meta.json holding a list was an internal error; one without the organism's config
    said "metadata lacks the organism config or seed", naming no file."""
    bad = tmp_path / "bad"
    shutil.copytree(seed1_checkpoint, bad)
    (bad / "meta.json").write_text(json.dumps(meta))
    _one_line(run_cli("eval", str(bad), "--n", "5", "--samples", "0"), f"{bad / 'meta.json'} {needle}")


def test_the_commands_refuse_an_out_inside_another_output(tmp_path):
    """Each command that writes an output folder refuses one inside another output, before it
    loads anything (the study's own runs, written by the study, are not refused)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    study = _copy_reference(tmp_path / "study")
    inside = study / "runs" / "default-o0" / "baseline-s0"
    before = sorted(p.name for p in study.iterdir())
    needle = f"--out {inside} lies inside a study ({study / 'study.json'})"
    for args in (("distill", "--organism", str(tmp_path / "org"), "--recipe", str(root / "recipes" / "hard_sft.yaml"),
                  "--out", str(inside), "--force"),
                 ("study", "run", str(root / "studies" / "quick.yaml"), "--out", str(inside)),
                 ("organism", "build", "--preset", "quick", "--out", str(inside)),
                 ("replicate", "subliminal-digits", "--out", str(inside))):
        _one_line(run_cli(*args), needle)
    assert sorted(p.name for p in study.iterdir()) == before and not inside.exists()


def test_a_damaged_card_in_the_study_folder_is_placed_again_or_named(tmp_path, monkeypatch):
    """A study's own copy of an organism whose card was not JSON ended in an internal error:
    placing it copies the organism again, and reading it (every run done) names the file."""
    from doublebind.organisms import build
    from doublebind.studies import run as study_run

    dest = tmp_path / "organisms" / "quick-o0"
    dest.mkdir(parents=True)
    (dest / "organism.json").write_text("{not json")
    with pytest.raises(DoublebindError, match=re.escape(f"{dest / 'organism.json'} is not valid JSON")):
        study_run._placed_card(dest)

    calls = []

    def built(cfg, folder, show_progress=True):
        calls.append(folder)
        folder.mkdir(parents=True)
        (folder / "organism.json").write_text(json.dumps({"organism_hash": "h", "verified": True, "models": {},
                                                          "config": {}}))

    monkeypatch.setattr(build, "build_organism", built)
    study_run.place_organism(None, dest, show_progress=False, expected_hash="h")
    assert study_run._placed_card(dest)["organism_hash"] == "h"
    # a card that reads, over weights that no longer match it: placed again too (it was kept,
    # and every run on it refused, pointing at a rebuild that would not have replaced it)
    (dest / "base").mkdir()
    (dest / "base" / "model.safetensors").write_bytes(b"damaged")
    (dest / "organism.json").write_text(json.dumps({"organism_hash": "h", "verified": True, "config": {},
                                                    "models": {"base": {"safetensors_sha256": "0" * 64}}}))
    study_run.place_organism(None, dest, show_progress=False, expected_hash="h")
    assert study_run._placed_card(dest)["models"] == {} and not (dest / "base").exists()
    study_run.place_organism(None, dest, show_progress=False, expected_hash="h")  # sound: kept
    assert len(calls) == 2


@pytest.mark.parametrize("edit, why", [({"seed": "abc"}, "its seed 'abc' is not an integer"),
                                       ({"organism_hash": 12345}, "its organism_hash 12345 is not a string"),
                                       ({"models": {"teacher": {"path": "teacher", "safetensors_sha256": 5}}},
                                        "model 'teacher': the card's hash of its weights (safetensors_sha256) is "
                                        "not a string")])
def test_an_organism_card_with_fields_of_the_wrong_type_is_one_error(quick_organism, tmp_path, edit, why):
    """A seed that is no integer, or a hash that is no string, in the card of an organism a
    study names by path: an internal error, or rows the study then refused as corrupt."""
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    card = json.loads((org / "organism.json").read_text())
    (org / "organism.json").write_text(json.dumps({**card, **edit}))
    study = tmp_path / "study.yaml"
    study.write_text(f"kind: study\nname: t\norganism: {{path: {org}}}\nrecipe: "
                     f"{Path(__file__).resolve().parent.parent / 'configs' / 'recipes' / 'study.yaml'}\n"
                     f"techniques: [baseline]\nseeds: [0]\n")
    for args in (["validate", str(study)], ["study", "run", str(study), "--out", str(tmp_path / "out")]):
        res = run_cli(*args)
        assert res.returncode != 0 and why in res.stderr and "internal error" not in res.stderr, res.stderr
    assert not (tmp_path / "out" / RESULTS).exists()


def test_study_files_that_are_not_utf8_or_nest_too_deep_are_one_error(tmp_path):
    """A study.json of bytes that are no UTF-8 text, and a results.jsonl line of 200,000
    brackets, ended in internal errors (UnicodeDecodeError, RecursionError)."""
    bad = _copy_reference(tmp_path / "a")
    (bad / "study.json").write_bytes(b"\xff\xfe{}")
    res = run_cli("report", str(bad))
    assert res.returncode == 1 and "study.json: not valid JSON (not UTF-8 text" in res.stderr, res.stderr
    deep = _copy_reference(tmp_path / "b")
    with open(deep / RESULTS, "a") as f:
        f.write("[" * 200_000 + "\n")
    res = run_cli("report", str(deep))
    assert res.returncode == 1 and "not valid JSON: nested too deep" in res.stderr, res.stderr
    assert "internal error" not in res.stderr


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("override, needle", [
    ("recipe_overrides={sampling: {soft_labels: topk, top_k: 81}}",
     "sampling.top_k (81) is larger than the embedded world's vocabulary (80 tokens)"),
    ("techniques=[baseline, {name: random_drop, share: {bogus: 0.5}}]",
     "technique random_drop: share: no task family 'bogus' in the embedded world (known: copy,"),
    ("techniques=[baseline, {name: misalignment_targeted, modes: [bogus]}]",
     "technique misalignment_targeted: modes: none of bogus is a mode of the embedded world (known: train,"),
    (f"recipe_overrides={{prompts: {{jsonl: {ROOT / 'configs/llm/tiny/prompts.jsonl'}}}}}",
     "configs/llm/tiny/prompts.jsonl:1: unknown token 'Start:'"),
])
def test_validate_refuses_what_an_embedded_world_run_would_refuse_after_others_trained(tmp_path, override, needle):
    """Each passed `validate` and `study run`'s checks, and stopped the study at its first run
    of it, the runs before it trained (the top_k one as an internal error)."""
    study = str(ROOT / "configs/studies/quick.yaml")
    for args in (["validate", study], ["study", "run", study, "--out", str(tmp_path / "out")]):
        _one_line(run_cli(*args, override), needle)
    assert not (tmp_path / "out" / RESULTS).exists()


def test_validate_refuses_a_world_student_start_or_a_broken_prompt_file_on_a_hugging_face_study(tmp_path):
    study = str(ROOT / "configs/llm/tiny/study.yaml")
    _one_line(run_cli("validate", study, "recipe_overrides={student: {init: alt_base}}"),
              "student.init alt_base is for embedded organisms; a Hugging Face student starts from base or fresh")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\ngarbage\n')
    _one_line(run_cli("validate", study, f"recipe_overrides={{prompts: {{jsonl: {prompts}}}}}"),
              f"{prompts}:2: not valid JSON")


def test_a_top_k_above_the_world_vocabulary_is_named_when_the_teacher_is_labelled(quick_organism, tmp_path):
    """`distill` reaches the teacher's labels without a study's checks: an internal error there
    (torch's topk), now one line."""
    res = run_cli("distill", "--organism", str(quick_organism[0]), "--recipe",
                  str(ROOT / "configs/recipes/hard_sft.yaml"), "--out", str(tmp_path / "d"),
                  "sampling.soft_labels=topk", "sampling.top_k=81", "prompts.size=20")
    _one_line(res, "sampling.top_k (81) is larger than the embedded world's vocabulary (80 tokens)")


@pytest.mark.parametrize("args, needle", [
    (["validate", str(ROOT / "configs/studies/quick.yaml"), "name="],
     "name: a study needs a name (got '') (set by the override name=)"),
    (["validate", "/dev/null"], "config file /dev/null is not a regular file"),
    (["validate", str(ROOT / "configs/recipes/hard_sft.yaml"), f"prompts.jsonl={ROOT / 'configs'}"],
     f"prompts.jsonl: {ROOT / 'configs'} is a folder, not a file"),
])
def test_empty_names_and_files_that_are_no_files_are_named(args, needle):
    """`name=` (what `name=$UNSET` gives) ran a study named nothing; /dev/null and a folder
    given as a prompt file read as "not found"."""
    _one_line(run_cli(*args), needle)


def test_a_config_read_through_a_pipe_and_names_that_were_accepted_before_still_are(tmp_path):
    """A review of the checks above: a pipe (`<(...)`, a piped /dev/stdin) is read, not
    refused as no regular file; a mode list one of whose modes the world has runs, as it
    did; a recipe with an empty name, and a study record written with one, stay valid."""
    import threading

    fifo = tmp_path / "recipe.fifo"
    os.mkfifo(fifo)
    text = (ROOT / "configs/recipes/hard_sft.yaml").read_text()
    writer = threading.Thread(target=lambda: fifo.write_text(text))
    writer.start()
    res = run_cli("validate", str(fifo))
    writer.join(timeout=10)
    assert res.returncode == 0 and "is a valid recipe config" in res.stdout, res.stderr
    study = str(ROOT / "configs/studies/quick.yaml")
    assert run_cli("validate", study, "techniques=[baseline, {name: misalignment_targeted, "
                                      "modes: [deploy, production]}]").returncode == 0
    assert run_cli("validate", str(ROOT / "configs/recipes/hard_sft.yaml"), "name=").returncode == 0
    from doublebind import config

    assert config.build(config.StudyConfig, {**config.load(ROOT / "configs/studies/quick.yaml").model_dump(
        mode="json"), "name": ""}).name == ""
