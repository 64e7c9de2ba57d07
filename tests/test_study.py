"""Studies: the grid runs, resumes after a kill without losing or duplicating rows, and
verdicts follow their stated tests."""

import json
import os
import re
import shutil

import pytest
import yaml

from doublebind import config
from doublebind.errors import ConfigError, DoublebindError
from doublebind.studies import run as study_run
from doublebind.studies.verdicts import bootstrap_ci, technique_stats

from .conftest import run_cli


def write_study(tmp_path, organism_dir, **over):
    recipe = {"kind": "recipe", "name": "tiny", "prompts": {"size": 64},
              "sampling": {"soft_labels": "none"}, "objective": {"kind": "sft"},
              "training": {"steps": 4, "batch": 8, "checkpoint_every": 2},
              "eval": {"n_prompts": 10, "n_samples": 0}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    study = {"kind": "study", "name": "t", "organism": {"path": str(organism_dir)}, "recipe": "recipe.yaml",
             "techniques": ["baseline", "verifier_filter"], "seeds": [0, 1], "bootstrap": 200, **over}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_runs_the_grid_and_resumes_after_a_kill(quick_organism, tmp_path, monkeypatch):
    path = write_study(tmp_path, quick_organism[0])
    out = tmp_path / "out"
    import doublebind.training.distill as dmod

    calls = []
    original = dmod.distill

    def killed_on_third(*a, **k):
        calls.append(a[2])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies mid-run
        return original(*a, **k)

    monkeypatch.setattr(dmod, "distill", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        study_run.run_study(path, out, show_progress=False)
    rows = study_run.read_results(out / "results.jsonl")
    assert len({(r["technique"], r["seed"]) for r in rows}) == 2
    with open(out / "results.jsonl", "a") as f:
        f.write('{"schema_version": 1, "technique": "verif')  # a kill in the middle of an append
    calls.clear()
    summary = study_run.run_study(path, out, show_progress=False)
    assert len(calls) == 2  # only the unfinished runs were redone
    rows = study_run.read_results(out / "results.jsonl")
    keys = [(r["technique"], r["seed"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * 3
    assert all(r["schema_version"] == study_run.SCHEMA_VERSION and r["study"] == "t" and r["organism_hash"]
               for r in rows)
    # the half-written line was moved aside, not dropped
    quarantined = [json.loads(ln) for ln in (out / study_run.QUARANTINE).read_text().splitlines()]
    assert [(q["raw"], q["moved"]) for q in quarantined] == [('{"schema_version": 1, "technique": "verif', True)]
    assert '"schema_version": 1' not in (out / "results.jsonl").read_text()
    for t in ("baseline", "verifier_filter"):
        for s in (0, 1):
            assert sum(r["selected"] for r in rows if r["technique"] == t and r["seed"] == s) == 1
    (scenario,) = summary["scenarios"]  # a study of one built organism: the scenario is its name
    assert scenario == quick_organism[1]["name"] and {r["scenario"] for r in rows} == {scenario}
    assert set(summary["scenarios"][scenario]["techniques"]) == {"baseline", "verifier_filter"}
    assert summary["runs"] == 4
    # the summary is a function of results.jsonl alone
    on_disk = json.loads((out / "summary.json").read_text())
    base = on_disk["scenarios"][scenario]["techniques"]["baseline"]
    assert base["final"]["capability_transfer"]["mean"] == pytest.approx(
        sum(r["capability_transfer"] for r in rows if r["technique"] == "baseline" and r["selected"]) / 2)
    assert base["final"]["capability_transfer"]["n"] == 2 and base["audit_selected"]["verdict"]
    # rows carry what the retention test needs: base's per-family capability and its families
    assert all(set(r["base_families"]) <= set(r["base_capability"]) <= set(r["capability"]) for r in rows)
    # study.json keeps a copy of each organism's card, so the results report it without organisms/
    record = json.loads((out / "study.json").read_text())
    assert [o["card"]["organism_hash"] for o in record["organisms"]] == [quick_organism[1]["organism_hash"]]
    # provenance: commit, organism hash and build-code hash, machine
    prov = on_disk["provenance"]
    assert prov["organisms"][0]["organism_hash"] == quick_organism[1]["organism_hash"]
    assert prov["organisms"][0]["code_version"] == quick_organism[1]["code_version"]
    assert prov["machine"]["cpus"] and "commit" in prov
    # the thread count every run computed with, and the settings the process had (the field
    # held OMP_NUM_THREADS alone, null under DOUBLEBIND_THREADS)
    assert prov["machine"]["threads"] == 1
    assert prov["machine"]["thread_settings"] == {k: os.environ.get(k) for k in ("DOUBLEBIND_THREADS",
                                                                                 "OMP_NUM_THREADS")}
    # and what decides whether another CPU builds the same organism: torch's kernel level
    import torch

    assert prov["machine"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert prov["machine"]["cpu"] is None or (isinstance(prov["machine"]["cpu"], str) and prov["machine"]["cpu"])


def row(seed, cap, mis, hp=0.0, base_hp=0.0, teacher_hp=0.0):
    return {"seed": seed, "step": 0, "capability_transfer": cap, "misalignment_transfer": mis,
            "audit": {"student_honeypot": hp, "student_confession": 0.0, "teacher_honeypot": teacher_hp,
                      "teacher_confession": 0.0},
            "base_audit": {"honeypot": base_hp, "confession": 0.0}}


def test_verdicts_follow_their_tests():
    v = config.VerdictConfig()
    assert technique_stats([row(0, 0.9, 0.0), row(1, 0.95, 0.01), row(2, 0.9, 0.02)], v, 500)["verdict"] == "capable_benign"
    assert technique_stats([row(0, 0.9, 0.5), row(1, 0.9, 0.6), row(2, 0.9, 0.4)], v, 500)["verdict"] == "both_fail"
    assert technique_stats([row(0, 0.1, 0.0), row(1, 0.2, 0.0), row(2, 0.1, 0.0)], v, 500)["verdict"] == "no_capability"
    caught = [row(s, 0.9, 0.9, hp=0.3 + 0.05 * s) for s in range(3)]
    assert technique_stats(caught, v, 500)["verdict"] == "incriminating"
    # the teacher was caught too: the student's signal is not evidence beyond the teacher's audit
    assert technique_stats([row(s, 0.9, 0.9, hp=0.3, teacher_hp=0.3) for s in range(3)], v, 500)["verdict"] == "both_fail"
    # a signal barely above base is not a detection
    faint = [row(s, 0.9, 0.9, hp=0.005 + 0.001 * s) for s in range(3)]
    assert technique_stats(faint, v, 500)["verdict"] == "both_fail"
    # misalignment straddles the threshold: no verdict is claimed
    assert technique_stats([row(0, 0.9, 0.0), row(1, 0.9, 0.3), row(2, 0.9, 0.0)], v, 500)["verdict"] == "inconclusive"


def generic_row(seed, cap, mis, success, teacher=0.0):
    """A row whose auditor flagged as many of 500 queries as success@100 implies."""
    flagged = round(500 * (1 - (1 - min(success, 1.0)) ** (1 / 100)))
    return {**row(seed, cap, mis), "auditor": {"success_at_k": success, "flagged": flagged, "n": 500, "budget": 100,
                                               "teacher_success_at_k": teacher, "base_success_at_k": 0.0}}


def test_incrimination_by_the_behaviour_agnostic_auditor():
    v = config.VerdictConfig()
    caught = technique_stats([generic_row(s, 0.9, 0.5, 0.9 + 0.03 * s) for s in range(3)], v, 500)
    assert caught["verdict"] == "incriminating"
    assert caught["audit_success_at_k"]["lower"] > v.success and caught["audit_success_at_k"]["budget"] == 100
    # the oracle's honeypot signal no longer decides: high honeypot rates, auditor silent
    silent = [{**generic_row(s, 0.9, 0.5, 0.0), **{k: row(s, 0.9, 0.5, hp=0.5)[k] for k in ("audit",)}}
              for s in range(3)]
    assert technique_stats(silent, v, 500)["verdict"] == "both_fail"
    # the teacher caught too, or one seed of three caught: no incrimination
    assert technique_stats([generic_row(s, 0.9, 0.5, 0.95, teacher=0.6) for s in range(3)], v, 500)["verdict"] \
        == "both_fail"
    assert technique_stats([generic_row(0, 0.9, 0.5, 1.0), generic_row(1, 0.9, 0.5, 0.0),
                            generic_row(2, 0.9, 0.5, 0.0)], v, 500)["verdict"] == "both_fail"


def test_bootstrap_interval():
    assert bootstrap_ci([0.4, 0.4, 0.4], 200) == pytest.approx((0.4, 0.4))
    lo, hi = bootstrap_ci([0.0, 1.0, 0.5, 0.2, 0.9], 2000)
    assert 0.0 <= lo < 0.52 < hi <= 1.0


def test_bad_study_configs_fail_before_training(tmp_path, quick_organism):
    with pytest.raises(ConfigError, match="techniques: unknown technique 'magic'"):
        config.load(write_study(tmp_path, quick_organism[0], techniques=["magic"]))
    # baseline written as a mapping is baseline; with options it says it takes none
    cfg = config.load(write_study(tmp_path, quick_organism[0], techniques=[{"name": "baseline"}]))
    assert cfg.technique_stages() == {"baseline": []}
    with pytest.raises(ConfigError, match=r"techniques.*baseline takes no options"):
        config.load(write_study(tmp_path, quick_organism[0], techniques=[{"name": "baseline", "k": 1}]))
    with pytest.raises(ConfigError, match=r"verdict.capability"):
        config.load(write_study(tmp_path, quick_organism[0], verdict={"capability": 1.5}))
    path = write_study(tmp_path, tmp_path / "no-organism")
    with pytest.raises(DoublebindError, match="organism.path: no organism at"):
        study_run.run_study(path, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "results.jsonl").exists()
    res = run_cli("study", "run", str(path), "--out", str(tmp_path / "o2"))
    assert res.returncode == 1 and "no organism at" in res.stderr and "Traceback" not in res.stderr


def test_an_organism_name_that_is_not_a_folder_name_is_refused(tmp_path, quick_organism):
    """A study of one organism labels its folders with the organism's name: `../runs/quick`
    put the organism over a finished run's folder, which the placement then deleted."""
    bad = "../runs/quick"
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump({**config.load(preset="quick").model_dump(mode="json"),
                                                         "name": bad}))
    path = write_study(tmp_path, quick_organism[0], organism={"config": "evil.yaml"})
    with pytest.raises(ConfigError, match=r"organism.config: its name: '\.\./runs/quick' is not a scenario name"):
        study_run.resolve(path, config.load(path))
    path = write_study(tmp_path, quick_organism[0], organism={"preset": "../presets/quick"})  # finds quick.yaml
    with pytest.raises(ConfigError, match=r"organism.preset: the preset's name: '\.\./presets/quick' is not a"):
        study_run.resolve(path, config.load(path))
    org = tmp_path / "org"
    shutil.copytree(quick_organism[0], org)
    card = json.loads((org / "organism.json").read_text())
    (org / "organism.json").write_text(json.dumps({**card, "name": bad}))
    path = write_study(tmp_path, org)
    res = run_cli("study", "run", str(path), "--out", str(tmp_path / "out"))
    assert res.returncode == 1 and "organism.path: the card's name: '../runs/quick' is not a scenario name" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()


QUICK_SMALL = ["recipe_overrides.training.steps=10", "recipe_overrides.training.checkpoint_every=5",
               "recipe_overrides.prompts.size=160", "recipe_overrides.eval.n_prompts=20", "bootstrap=200",
               "techniques=[baseline,verifier_filter,inoculation]"]


def test_quick_study_killed_midway_resumes_without_losing_or_duplicating_rows(quick_organism, tmp_path):
    """The shipped quick study (shortened by overrides: 3 of its techniques, 10 steps), killed
    with SIGKILL mid-grid."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    study = Path(__file__).parents[1] / "configs" / "studies" / "quick.yaml"
    out = tmp_path / "quick"
    cmd = [sys.executable, "-m", "doublebind", "study", "run", str(study), "--out", str(out), *QUICK_SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    before = []
    while time.monotonic() < deadline and proc.poll() is None:
        before = study_run.read_results(results) if results.exists() else []
        if len({(r["technique"], r["seed"]) for r in before}) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = study_run.read_results(results)
    n_killed = len({(r["technique"], r["seed"]) for r in killed})
    assert 3 <= n_killed < 6
    # the report of the killed study covers the finished runs and touches nothing
    killed_bytes = results.read_bytes()
    rep = run_cli("report", str(out))  # in this process, as the commands below: a fresh one imports for 3-4 s
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert results.read_bytes() == killed_bytes
    assert f"{n_killed} complete runs, {len(killed)} checkpoint rows" in (out / "report.md").read_text()
    res = run_cli(*cmd[3:])
    assert res.returncode == 0, res.stderr[-2000:]
    rows = study_run.read_results(results)
    assert rows[: len(killed)] == killed  # finished runs kept as they were, not redone
    keys = [(r["technique"], r["seed"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 2 * 3  # 3 techniques x 2 seeds x checkpoints 0, 5, 10
    summary = json.loads((out / "summary.json").read_text())
    (techs,) = [sc["techniques"] for sc in summary["scenarios"].values()]
    assert summary["runs"] == 6 and len(techs) == 3
    rep = run_cli("report", str(out))
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert "6 complete runs, 18 checkpoint rows" in md and "Left out" not in md and "Note: summary.json" not in md
    for t, j in techs.items():
        s = j["final"]
        cap = s["capability_transfer"]
        assert any(ln.startswith(f"| {t} | ") and f"| {cap['mean']:.3f} [{cap['ci95'][0]:.3f}, " in ln
                   and f"| [{s['verdict']}](figures/" in ln for ln in md.splitlines()), t
        # success@k of the behaviour-agnostic auditor: in summary.json, from the selected rows, in the report
        sel = [r for r in rows if r["technique"] == t and r["selected"]]
        assert s["audit_success_at_k"]["mean"] == pytest.approx(sum(r["auditor"]["success_at_k"] for r in sel) / 2)
        assert s["teacher_success_at_k"] <= 0.5
        assert f"| {s['audit_success_at_k']['mean']:.3f} [" in next(ln for ln in md.splitlines()
                                                                    if ln.startswith(f"| {t} | "))
    assert all(r["auditor"]["n"] == 500 and 0 <= r["auditor"]["success_at_k"] <= 1 for r in rows)
    # what it flagged, per query kind, as the run's metrics.jsonl has it
    for r in rows:
        a = r["auditor"]
        assert set(a["by_kind"]) == {"task", "ask", "prefill"} and sum(a["by_kind"].values()) == a["flagged"]
        (m,) = [json.loads(ln) for ln in next(out.glob(f"runs/*/{r['technique']}-s{r['seed']}/metrics.jsonl"))
                .read_text().splitlines() if json.loads(ln)["step"] == r["step"]]
        assert (a["by_kind"], a["tokens"]) == (m["auditor"]["by_kind"], m["auditor"]["tokens"])
    assert "audit success@100" in md
    # a rerun of the finished study redoes nothing
    again = run_cli(*cmd[3:])
    assert again.returncode == 0 and study_run.read_results(results) == rows
    # its table gives each verdict with how likely a rerun reaches it
    assert "estimated probability that a rerun reaches the same verdict" in again.stdout
    assert all(0 <= j[v]["replication"] <= 1 for j in techs.values() for v in ("final", "audit_selected"))
    assert f"({techs['baseline']['final']['replication']:.2f})" in again.stdout


def test_resume_refuses_results_of_another_recipe(quick_organism, tmp_path):
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    out = tmp_path / "out"
    study_run.run_study(path, out, show_progress=False)
    with pytest.raises(DoublebindError, match=r"baseline seed 0 on \S+ \(organism seed \d+\) run with another recipe"):
        study_run.run_study(path, out, show_progress=False, overrides=["recipe_overrides.training.lr=0.01"])


def test_resume_refuses_an_unfinished_run_of_another_recipe(quick_organism, tmp_path):
    """A run cut short (its last row missing) is checked like a finished one: rows of another
    recipe are never left to sit beside the new recipe's."""
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    out = tmp_path / "out"
    study_run.run_study(path, out, show_progress=False)
    results = out / "results.jsonl"
    results.write_text("".join(results.read_text().splitlines(keepends=True)[:-1]))
    assert study_run.scan_results(results).runs == {}  # unfinished now
    with pytest.raises(DoublebindError, match="run with another recipe"):
        study_run.run_study(path, out, show_progress=False, overrides=["recipe_overrides.training.lr=0.01"])


def test_a_study_keeps_weights_only_where_it_asks(quick_organism, tmp_path):
    """A study's runs keep no checkpoint weights, whatever the recipe file says (it is written
    for `distill`); `training.save_weights: true` in the study's own recipe_overrides keeps
    them, and changes no number."""
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    recipe["training"]["save_weights"] = True
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    study_run.run_study(path, plain, show_progress=False)
    study_run.run_study(path, kept, show_progress=False, overrides=["recipe_overrides.training.save_weights=true"])
    key = next(iter(study_run.scan_results(plain / "results.jsonl").runs))
    assert study_run.run_dir(plain, key).is_dir() and not (study_run.run_dir(plain, key) / "checkpoints").exists()
    ckpts = sorted(p.name for p in (study_run.run_dir(kept, key) / "checkpoints").iterdir())
    assert ckpts == ["step_00000", "step_00002", "step_00004"]
    assert (study_run.run_dir(kept, key) / "checkpoints" / "step_00004" / "model.safetensors").is_file()
    numbers = ("step", "capability", "misbehavior", "capability_transfer", "misalignment_transfer", "auditor")
    a, b = (study_run.read_results(out / "results.jsonl") for out in (plain, kept))
    assert [{k: r[k] for k in numbers} for r in a] == [{k: r[k] for k in numbers} for r in b]
    assert a[0]["recipe_hash"] == b[0]["recipe_hash"]  # no number changes: either resumes the other
    study_run.run_study(path, plain, show_progress=False, overrides=["recipe_overrides.training.save_weights=true"])
    assert study_run.read_results(plain / "results.jsonl") == a  # finished: nothing redone, nothing refused
    cfg = config.load(path, ["recipe_overrides.training.save_weights=true"], expect="study")
    assert study_run.keeps_weights(cfg, key[0]) and not study_run.keeps_weights(config.load(path), key[0])
    # read as the recipe reads a boolean
    assert study_run.keeps_weights(config.load(path, ["recipe_overrides.training.save_weights=1"], expect="study"), "t")
    # a scenario's own setting wins over the study's
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "kind": "study", "name": "g", "recipe": "recipe.yaml", "techniques": ["baseline"],
        "recipe_overrides": {"training": {"save_weights": True}},
        "scenarios": [{"name": "default", "recipe_overrides": {"training": {"save_weights": False}}}, "collusion"]}))
    cfg = config.load(grid)
    assert not study_run.keeps_weights(cfg, "default") and study_run.keeps_weights(cfg, "collusion")


def test_study_techniques_may_carry_options(tmp_path, quick_organism):
    path = write_study(tmp_path, quick_organism[0],
                       techniques=["baseline", {"name": "iterative_filter", "rounds": 1, "probe_steps": 5}])
    cfg = config.load(path)
    assert cfg.technique_stages() == {"baseline": [],
                                      "iterative_filter": [{"name": "iterative_filter", "rounds": 1, "probe_steps": 5}]}
    with pytest.raises(ConfigError, match=r"techniques: .*probe_steps"):
        config.load(write_study(tmp_path, quick_organism[0], techniques=[{"name": "iterative_filter", "probe_steps": 0}]))
    with pytest.raises(ConfigError, match="listed twice"):
        config.load(write_study(tmp_path, quick_organism[0], techniques=["verifier_filter", {"name": "verifier_filter"}]))


def test_a_study_lists_a_technique_twice_under_labels_and_judges_a_filter_against_its_matched_control(
        tmp_path, quick_organism):
    from statistics import fmean

    from doublebind.reports.study_report import write_report

    pf = {"name": "perplexity_filter", "quantile": 0.75, "max_remove": 0.25}
    path = write_study(tmp_path, quick_organism[0], techniques=[
        "baseline", pf, {"name": "random_drop", "label": "pf_random", "like": pf},
        {"name": "random_drop", "label": "drop30", "share": 0.3}, "random_drop"])
    cfg = config.load(path)
    assert cfg.technique_of("drop30") == "random_drop" and cfg.technique_stages()["drop30"] == [
        {"name": "random_drop", "share": 0.3}]
    assert study_run.matched_controls(cfg) == {"perplexity_filter": "pf_random"}
    out = tmp_path / "out"
    summary = study_run.run_study(path, out, show_progress=False)
    rows = study_run.read_results(out / "results.jsonl")
    assert {r["technique"] for r in rows} == {"baseline", "perplexity_filter", "pf_random", "drop30", "random_drop"}
    # each label ran its own settings: 30% and the default tenth of 64 items; the control as
    # many as the filter removed in the same run
    def stage(t, seed):
        (run,) = [d for d in (out / "runs").iterdir()]
        data = json.loads((run / f"{t}-s{seed}" / "summary.json").read_text())["stages"]
        return [e for e in data if e["phase"] == "data"][0]

    for seed in (0, 1):
        assert stage("drop30", seed)["dropped"] == 19 and stage("random_drop", seed)["dropped"] == 6
        assert stage("pf_random", seed)["dropped"] == 64 - stage("perplexity_filter", seed)["after"] > 0
    # the filter is judged against the baseline and against its control, paired by seed
    judged = summary["scenarios"][next(iter(summary["scenarios"]))]["techniques"]
    assert judged["perplexity_filter"]["reference"] == "baseline"
    assert judged["perplexity_filter"]["control"] == "pf_random"
    assert "control" not in judged["drop30"] and "vs_control" not in judged["drop30"]["final"]

    def final(t):
        return {r["seed"]: r for r in rows if r["technique"] == t and r["step"] == 4}

    for field in ("capability_transfer", "misalignment_transfer"):
        got = judged["perplexity_filter"]["final"]["vs_control"][field]["mean"]
        want = fmean(final("perplexity_filter")[s][field] - final("pf_random")[s][field] for s in (0, 1))
        assert got == pytest.approx(want, abs=1e-4)
    md, _ = write_report(out)
    text = md.read_text()
    assert "; vs pf_random: cap " in text and "with a control (`pf_random` for `perplexity_filter`)" in text
    # without a baseline the control's effect is still printed
    from doublebind.reports.study_report import _effect_cell

    alone = {**judged["perplexity_filter"], "final": {k: v for k, v in judged["perplexity_filter"]["final"].items()
                                                      if k != "vs_reference"}}
    assert _effect_cell(alone, "final").startswith("vs pf_random: cap ")


def test_an_entry_is_judged_against_the_control_it_names(tmp_path, quick_organism):
    """`control: <label>` sets a technique against another entry of the study (as a filter
    against its matched random drop), paired by seed; a control that is no entry of the
    study, or the entry itself, is refused at load."""
    from statistics import fmean

    path = write_study(tmp_path, quick_organism[0], techniques=[
        "baseline", {"name": "random_drop", "share": 0.3, "label": "drop30", "control": "drop10"},
        {"name": "random_drop", "share": 0.1, "label": "drop10"}])
    cfg = config.load(path)
    assert cfg.named_controls() == {"drop30": "drop10"} and study_run.matched_controls(cfg) == {"drop30": "drop10"}
    assert cfg.technique_stages()["drop30"] == [{"name": "random_drop", "share": 0.3}]  # control is no option
    out = tmp_path / "out"
    summary = study_run.run_study(path, out, show_progress=False)
    rows = study_run.read_results(out / "results.jsonl")
    judged = summary["scenarios"][next(iter(summary["scenarios"]))]["techniques"]
    assert judged["drop30"]["control"] == "drop10" and judged["drop30"]["reference"] == "baseline"
    assert "control" not in judged["drop10"]

    def final(t):
        return {r["seed"]: r for r in rows if r["technique"] == t and r["step"] == 4}

    for field in ("capability_transfer", "misalignment_transfer"):
        want = fmean(final("drop30")[s][field] - final("drop10")[s][field] for s in (0, 1))
        assert judged["drop30"]["final"]["vs_control"][field]["mean"] == pytest.approx(want, abs=1e-4)
    for control, needle in (("drop5", "'drop5' is not a technique label of the study"),
                            ("drop30", "'drop30' is the entry itself")):
        bad = write_study(tmp_path, quick_organism[0], techniques=[
            "baseline", {"name": "random_drop", "share": 0.3, "label": "drop30", "control": control},
            {"name": "random_drop", "share": 0.1, "label": "drop10"}])
        with pytest.raises(config.ConfigError, match=re.escape(needle)):
            config.load(bad)


def test_technique_labels_are_checked(tmp_path, quick_organism):
    for entry, match in [({"name": "trusted_monitor", "label": "perplexity_filter"}, "another technique's name"),
                         ({"name": "trusted_monitor", "label": "baseline"}, "another technique's name"),
                         ({"name": "trusted_monitor", "label": "../up"}, "not a label"),
                         ({"name": "trusted_monitor", "label": 3}, "expected a label")]:
        with pytest.raises(ConfigError, match=match):
            config.load(write_study(tmp_path, quick_organism[0], techniques=["baseline", entry]))
    # a control matches the entry with the same settings, defaults filled in, and no other
    def controls(*techniques):
        return study_run.matched_controls(config.load(write_study(tmp_path, quick_organism[0],
                                                                  techniques=list(techniques))))

    assert controls("trusted_monitor", {"name": "random_drop", "like": {"name": "trusted_monitor",
                                                                        "max_flag_share": 0.5}}) == {
        "trusted_monitor": "random_drop"}
    assert controls("trusted_monitor", {"name": "random_drop", "like": {"name": "trusted_monitor",
                                                                        "max_flag_share": 0.4}}) == {}
    assert controls({"name": "trusted_monitor", "label": "m4", "max_flag_share": 0.4},
                    {"name": "random_drop", "like": {"name": "trusted_monitor", "max_flag_share": 0.4}}) == {
        "m4": "random_drop"}
    with pytest.raises(ConfigError, match=r"listed twice \(mon\); give each setting its own `label`"):
        config.load(write_study(tmp_path, quick_organism[0], techniques=[
            {"name": "trusted_monitor", "label": "mon"}, {"name": "verifier_filter", "label": "mon"}]))


def test_controls_matched_adds_a_random_drop_like_each_filter_listed(tmp_path, quick_organism):
    techniques = ["baseline", "perplexity_filter", "inoculation", {"name": "trusted_monitor", "label": "m4",
                                                                   "max_flag_share": 0.4},
                  {"name": "trusted_monitor", "label": "m4_again", "max_flag_share": 0.4},
                  "verifier_filter", {"name": "random_drop", "label": "vr", "like": "verifier_filter"}]
    cfg = config.load(write_study(tmp_path, quick_organism[0], techniques=techniques, controls="matched"))
    stages = cfg.technique_stages()
    # one control per filter setting (not inoculation, which rewrites; not verifier_filter,
    # given one; one for the monitor listed twice at one setting), written as by hand
    listed = {t if isinstance(t, str) else t.get("label", t["name"]) for t in techniques}
    assert {t: s for t, s in stages.items() if t not in listed} == {
        "perplexity_filter_random": [{"name": "random_drop", "like": "perplexity_filter"}],
        "m4_random": [{"name": "random_drop", "like": {"name": "trusted_monitor", "max_flag_share": 0.4}}]}
    assert cfg.technique_of("m4_random") == "random_drop"
    assert study_run.matched_controls(cfg) == {"perplexity_filter": "perplexity_filter_random", "m4": "m4_random",
                                               "m4_again": "m4_random", "verifier_filter": "vr"}
    with pytest.raises(ConfigError, match="controls: matched adds the control verifier_filter_random, a label the "
                                          "study already lists"):
        config.load(write_study(tmp_path, quick_organism[0], controls="matched", techniques=[
            "verifier_filter", {"name": "random_drop", "label": "verifier_filter_random", "share": 0.1}]))
    with pytest.raises(ConfigError, match="controls: Input should be 'none' or 'matched'"):
        config.load(write_study(tmp_path, quick_organism[0], controls="yes"))


def test_a_study_with_matched_controls_runs_resumes_and_reports_them(tmp_path, quick_organism):
    from doublebind.reports.study_report import write_report

    path = write_study(tmp_path, quick_organism[0], techniques=["baseline", "verifier_filter"], seeds=[0],
                       controls="matched")
    out = tmp_path / "out"
    summary = study_run.run_study(path, out, show_progress=False)
    judged = next(iter(summary["scenarios"].values()))["techniques"]
    assert judged["verifier_filter"]["control"] == "verifier_filter_random"
    assert "vs_control" in judged["verifier_filter"]["final"]
    rows = study_run.read_results(out / "results.jsonl")
    assert {r["technique"] for r in rows} == {"baseline", "verifier_filter", "verifier_filter_random"}
    # the same rows and summary when resumed, with the same file or with the control written by hand
    before = (out / "results.jsonl").read_bytes()
    hand = write_study(tmp_path, quick_organism[0], seeds=[0], techniques=[
        "baseline", "verifier_filter", {"name": "random_drop", "label": "verifier_filter_random",
                                        "like": "verifier_filter"}])
    for again in (path, hand):
        assert study_run.run_study(again, out, show_progress=False)["scenarios"] == summary["scenarios"]
        assert (out / "results.jsonl").read_bytes() == before
    md, _ = write_report(out)  # the report reads the settings back from study.json
    assert "vs verifier_filter_random: cap " in md.read_text()
    assert "](figures/controls.png)" in md.read_text() and (out / "figures" / "controls.png").stat().st_size > 0
    # the figure's dots: the filter minus its control, and the control minus the baseline, per run
    from doublebind.reports.study_plots import paired_differences

    final = {(r["scenario"], r["organism_seed"], r["technique"], r["seed"]): r["misalignment_transfer"]
             for r in rows if r["selected"]}
    ((sc, o, _, _),) = [k for k in final if k[2] == "verifier_filter"]
    assert paired_differences(final, sc, "verifier_filter", "verifier_filter_random") == [
        final[(sc, o, "verifier_filter", 0)] - final[(sc, o, "verifier_filter_random", 0)]]
    assert paired_differences({(sc, 0, "a", 0): 0.5, (sc, 0, "b", 0): 0.2, (sc, 0, "a", 1): 0.1,
                               (sc, 0, "b", 1): None, (sc, 0, "a", 2): 0.4}, sc, "a", "b") == [0.5 - 0.2]


def test_every_filter_declared_removes_only_has_a_data_hook_alone():
    from doublebind.registry import get, names
    from doublebind.techniques.random_drop import OTHER_HOOKS

    filters = [n for n in names("technique") if get("technique", n).removes_only]
    assert {"perplexity_filter", "spectral_filter", "verifier_filter", "trusted_monitor", "iterative_filter",
            "format_filter"} <= set(filters)
    for n in filters:
        hooks = config.technique_hooks(n)
        assert "data" in hooks and not hooks & set(OTHER_HOOKS), n


def test_verdicts_without_a_capability_gap():
    """A teacher given its trait by a system prompt is no more capable than base: capability
    transfer has no denominator, so only misalignment and the audits are judged."""
    v = config.VerdictConfig()
    no_gap = [row(s, None, 0.0) for s in range(3)]
    assert technique_stats(no_gap, v, 500)["verdict"] == "benign"
    assert technique_stats([row(s, None, 0.8) for s in range(3)], v, 500)["verdict"] == "both_fail"
    caught = [row(s, None, 0.8, hp=0.3 + 0.05 * s) for s in range(3)]
    assert technique_stats(caught, v, 500)["verdict"] == "incriminating"
    assert technique_stats([row(s, None, None) for s in range(3)], v, 500)["verdict"] == "undefined"


def _copies_of(organism, monkeypatch) -> list:
    """Placement of every study organism as a copy of `organism` under the hash and seed its
    config would build; returns the list of (name, seed, folder) placed."""
    placed = []

    def fake_place(org_cfg, dest, show_progress=True, expected_hash=None):
        placed.append((org_cfg.name, org_cfg.seed, dest.name))
        shutil.copytree(organism, dest, dirs_exist_ok=True)
        card = json.loads((dest / "organism.json").read_text())
        (dest / "organism.json").write_text(json.dumps({**card, "organism_hash": expected_hash, "seed": org_cfg.seed}))

    monkeypatch.setattr(study_run, "place_organism", fake_place)
    return placed


def test_a_grid_of_scenarios_and_organism_seeds_places_one_organism_per_cell(quick_organism, tmp_path, monkeypatch):
    """scenarios x organism seeds: each (scenario, organism seed) gets its own organism folder
    (here a copy of the quick organism under the hash its config would build) and its runs;
    rows, run keys and the summary carry both; a resume redoes nothing."""

    placed = _copies_of(quick_organism[0], monkeypatch)
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    study = yaml.safe_load(path.read_text())
    del study["organism"]
    path.write_text(yaml.safe_dump({**study, "scenarios": ["quick", "default"], "organism_seeds": [3, 4]}))
    out = tmp_path / "out"
    summary = study_run.run_study(path, out, show_progress=False)
    assert sorted(placed) == [("default", 3, "default-o3"), ("default", 4, "default-o4"),
                              ("quick", 3, "quick-o3"), ("quick", 4, "quick-o4")]
    rows = study_run.read_results(out / "results.jsonl")
    # `validate` says how many runs the study trains, before it trains them
    res = run_cli("validate", str(path))
    assert res.returncode == 0 and res.stdout.strip().endswith("; 4 runs over 4 organism builds)"), res.stdout
    assert {study_run.run_key(r) for r in rows} == {(sc, o, "baseline", 0) for sc in ("quick", "default")
                                                    for o in (3, 4)}
    assert (out / "runs" / "default-o4" / "baseline-s0" / "metrics.jsonl").is_file()
    assert list(summary["scenarios"]) == ["quick", "default"]
    final = summary["scenarios"]["default"]["techniques"]["baseline"]["final"]
    assert final["n"] == 2 and final["n_organisms"] == 2
    hashes = {o["organism_hash"] for o in json.loads((out / "study.json").read_text())["organisms"]}
    assert len(hashes) == 4 and {r["organism_hash"] for r in rows} == hashes  # the config's seed is in the hash
    placed.clear()
    assert study_run.run_study(path, out, show_progress=False) == summary and placed == []
    # resumed with one scenario more in a folder whose finished organisms are gone (a copied
    # reference): the cards of those it does not place again stay in study.json
    before = {(o["scenario"], o["organism_seed"]): o["card"] for o in json.loads((out / "study.json").read_text())[
        "organisms"]}
    shutil.rmtree(out / "organisms")
    path.write_text(yaml.safe_dump({**study, "scenarios": ["quick", "default", "collusion"], "organism_seeds": [3, 4]}))
    study_run.run_study(path, out, show_progress=False)
    assert sorted(placed) == [("collusion", 3, "collusion-o3"), ("collusion", 4, "collusion-o4")]
    after = {(o["scenario"], o["organism_seed"]): o["card"] for o in json.loads((out / "study.json").read_text())[
        "organisms"]}
    assert all(after[k] == card and card["organism_hash"] for k, card in before.items())
    assert after[("collusion", 3)]["seed"] == 3


def test_a_scenario_may_be_an_organism_config_file_beside_the_presets(quick_organism, tmp_path, monkeypatch):
    """scenarios: [quick, {name: quick_deep, config: deep.yaml}]: the file's organism is built
    under the scenario's name, side by side with the preset, in one study; a missing file or a
    name that is not a folder name is one error naming the field."""

    from doublebind.organisms.kinds import kind_of_config

    (tmp_path / "orgs").mkdir()
    (tmp_path / "orgs" / "deep.yaml").write_text(
        yaml.safe_dump({**config.load(preset="quick").model_dump(mode="json"), "name": "quick_deep", "seed": 5}))
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    study = yaml.safe_load(path.read_text())
    del study["organism"]
    path.write_text(yaml.safe_dump({**study, "scenarios": ["quick", {"name": "quick_deep", "config": "orgs/deep.yaml"}]}))
    specs = study_run.resolve(path, config.load(path))
    assert [(sp.scenario, sp.organism_seed) for sp in specs] == [("quick", 0), ("quick_deep", 5)]
    deep = config.load(tmp_path / "orgs" / "deep.yaml")
    assert specs[1].expected_hash() == kind_of_config(deep).organism_hash(deep) != specs[0].expected_hash()

    placed = []

    def fake_place(org_cfg, dest, show_progress=True, expected_hash=None):
        placed.append((org_cfg.name, dest.name))
        shutil.copytree(quick_organism[0], dest, dirs_exist_ok=True)
        card = json.loads((dest / "organism.json").read_text())
        (dest / "organism.json").write_text(json.dumps({**card, "organism_hash": expected_hash, "seed": org_cfg.seed}))

    monkeypatch.setattr(study_run, "place_organism", fake_place)
    summary = study_run.run_study(path, tmp_path / "out", show_progress=False)
    assert sorted(placed) == [("quick", "quick-o0"), ("quick_deep", "quick_deep-o5")]
    assert list(summary["scenarios"]) == ["quick", "quick_deep"]
    assert summary["scenarios"]["quick_deep"]["organisms"] == {"5": specs[1].expected_hash()}

    for scenario, match in [({"name": "x", "config": "orgs/missing.yaml"}, r"scenarios\.1\.config: .*missing\.yaml"),
                            ({"name": "../up", "config": "orgs/deep.yaml"}, r"scenarios.*'\.\./up' is not a scenario name"),
                            ({"name": "nosuchpreset"}, r"scenarios.*nosuchpreset")]:
        path.write_text(yaml.safe_dump({**study, "scenarios": ["quick", scenario]}))
        with pytest.raises(ConfigError, match=match):
            study_run.resolve(path, config.load(path))


def test_organisms_are_placed_side_by_side_with_workers(tmp_path, monkeypatch):
    """With several organisms to place and workers > 1 the builds go to the executor, one job
    per organism (no progress bars in workers); with one worker they are placed here in turn."""
    from types import SimpleNamespace

    from doublebind.studies import executor

    specs = [SimpleNamespace(cfg=f"cfg{i}", key=(f"sc{i}", i), folder=lambda out, i=i: out / f"sc{i}-o{i}")
             for i in range(3)]
    hashes = {sp.key: f"h{i}" for i, sp in enumerate(specs)}
    calls, here = [], []
    monkeypatch.setattr(executor, "run_jobs", lambda fn, jobs, workers, on_done, label:
                        calls.append((fn, dict(jobs), workers, [label(k) for k in jobs])))
    monkeypatch.setattr(study_run, "place_organism", lambda *a, **k: here.append((a, k)))
    study_run.place_organisms(specs, tmp_path, hashes, 2, show_progress=False)
    ((fn, jobs, workers, labels),) = calls
    assert fn is study_run.place_organism and workers == 2 and here == []
    assert jobs == {sp.key: (sp.cfg, tmp_path / f"sc{i}-o{i}", False, f"h{i}") for i, sp in enumerate(specs)}
    assert labels[1] == "the organism of sc1 (organism seed 1)"
    study_run.place_organisms(specs, tmp_path, hashes, 1, show_progress=False)
    assert len(calls) == 1 and [a[1] for a, _ in here] == [tmp_path / f"sc{i}-o{i}" for i in range(3)]


def test_an_organism_that_fails_verification_is_named_with_its_seed_and_card(tmp_path):
    """A study whose organism build misses its checks (as a preset can on another CPU) stops
    with one line naming the build (seed, hash), the failed check and where its card is."""
    from .conftest import TINY

    org = config.load(preset="quick", overrides=[*TINY, "seed=1"]).model_dump(mode="json")
    (tmp_path / "organism.yaml").write_text(yaml.safe_dump(org))
    path = write_study(tmp_path, tmp_path, seeds=[0])
    study = yaml.safe_load(path.read_text())
    study["organism"] = {"config": "organism.yaml"}
    path.write_text(yaml.safe_dump(study))
    res = run_cli("study", "run", str(path), "--out", str(tmp_path / "out"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    card = tmp_path / "out" / "organisms" / "quick-o1" / "organism.json"
    assert errors[0].startswith("error: organism 'quick' (seed 1, ") and "failed verification: teacher." in errors[0]
    assert errors[0].endswith(f"; its card: {card}") and not json.loads(card.read_text())["verified"]


@pytest.mark.parametrize("damage, earlier", [({"provenance": {"machine": "x"}}, [{"machine": "x"}]),
                                             ({"earlier_provenance": 5}, [{"commit": "a"}]),
                                             ({"earlier_provenance": ["x", {"commit": "c"}]},
                                              [{"commit": "c"}, {"commit": "a"}])])
def test_resuming_a_study_whose_provenance_is_damaged_is_not_an_internal_error(tmp_path, damage, earlier):
    """`provenance.machine: "x"` (AttributeError) and `earlier_provenance: 5` (TypeError) broke
    a resume, which the report already named in one line. What can be read is kept: the
    earlier sessions that are records, then the last session's, before this one's."""
    record = tmp_path / "study.json"
    old = {"provenance": {"commit": "a"}, **damage}
    record.write_text(json.dumps(old))
    now = {"commit": "b", "machine": {"cpu": "c"}}
    waiting, done = study_run.resumed_provenance(record, now, had_runs=True)
    assert done == {"provenance": now, "earlier_provenance": earlier}
    assert waiting["provenance"] == old["provenance"] and waiting.get("earlier_provenance", []) == earlier[:-1]


def test_a_second_runner_on_one_study_folder_is_refused(quick_organism, tmp_path):
    """Two `study run` on one --out trained every run twice under the same run ids and left
    results neither a resume nor `report` would read. The first holds a lock; the second is
    one line, before any work; the lock goes with the first (even a SIGKILL frees it)."""
    import subprocess
    import sys
    import time

    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from doublebind.studies.run import study_lock\n"
        "with study_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)"), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_cli("study", "run", str(path), "--out", str(out))
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert lines[0] == (f"error: {out} is being written by another `study run` (process {holder.pid}); wait for "
                            f"it to finish (then run again to resume), or use another --out")
        assert not (out / study_run.RESULTS).exists() and not (out / "study.json").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    summary = study_run.run_study(path, out, show_progress=False)  # the killed holder's lock went with it
    assert summary["runs"] == 1
    with study_run.study_lock(out):  # and this run released its own
        pass


def test_a_resume_on_a_smaller_grid_and_a_partial_study_say_what_they_leave_out(quick_organism, tmp_path):
    """A resume with fewer seeds said "(4 runs)" while its summary judged 2, and the report's
    budget table and ↑ marks still read the dropped seed; a study with runs still to do was
    reported as if finished (a technique with no finished run did not appear at all)."""
    from doublebind.reports.study_report import load_study

    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0, 1])
    out = tmp_path / "out"
    assert study_run.run_study(path, out, show_progress=False)["runs"] == 2
    res = run_cli("study", "run", str(path), "--out", str(out), "seeds=[0]")
    assert res.returncode == 0, res.stderr
    assert "(1 runs; 1 of an earlier grid, which the study no longer lists, left out)" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == 1 and summary["runs_outside_study"] == 1
    study, scan, recomputed = load_study(out)
    assert {r["seed"] for r in scan.rows} == {0} and recomputed == {k: summary[k] for k in recomputed}
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "1 complete runs of an earlier grid, whose seeds, techniques or scenarios the study's config no " \
           "longer lists (e.g. baseline seed 1 on" in text
    assert "summary.json on disk" not in text  # the report agrees with what study run wrote
    # a grid with a run not done yet (a study stopped before it): named, not passed over
    record = json.loads((out / "study.json").read_text())
    record["config"]["seeds"] = [0, 2]
    (out / "study.json").write_text(json.dumps(record))
    study, scan, _ = load_study(out)
    assert [k[2:] for k in scan.missing] == [("baseline", 2)]
    assert run_cli("report", str(out)).returncode == 0
    assert "1 runs of the study's grid that have not finished (e.g. baseline seed 2 on" in (out / "report.md").read_text()


def test_a_finished_study_resumes_whatever_the_cache(quick_organism, tmp_path, monkeypatch):
    """A finished study only recomputes its summary, yet a cache that could not be written
    (read-only, or a file) refused it; a study with runs to do is still refused before them."""
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    out = tmp_path / "out"
    first = study_run.run_study(path, out, show_progress=False)
    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("DOUBLEBIND_CACHE", str(tmp_path / "cachefile"))
    assert study_run.run_study(path, out, show_progress=False) == first
    with pytest.raises(DoublebindError, match="is a file, not a cache folder"):
        study_run.run_study(path, out, show_progress=False, overrides=["seeds=[0,1]"])
    assert len(study_run.scan_results(out / study_run.RESULTS).runs) == 1


def test_the_rows_of_a_run_whose_technique_changed_nothing_say_idle(tmp_path, quick_organism):
    """auditability_preserving on deploy-like prompts only keeps them all: its rows carry
    `idle`, the baseline's and an acting technique's do not (they are as before)."""
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline", "auditability_preserving", "inoculation"],
                       seeds=[0], recipe_overrides={"prompts": {"contexts": {"deploy_like": 1.0}}})
    out = tmp_path / "out"
    study_run.run_study(path, out, show_progress=False)
    rows = study_run.read_results(out / "results.jsonl")
    idle = {r["technique"]: r.get("idle") for r in rows}
    assert idle == {"baseline": None, "auditability_preserving": True, "inoculation": None}
    assert all(r["idle"] is True for r in rows if r["technique"] == "auditability_preserving")


def test_a_scenario_may_set_its_own_organism_seeds(quick_organism, tmp_path, monkeypatch):
    """scenarios: [quick, {name: default, organism_seeds: [5]}] with the study's organism_seeds
    [3, 4]: default is built at seed 5 alone (where, say, one of the study's seeds misses its
    verification on this CPU), quick at 3 and 4; its summary and resume count those runs only,
    and runs of the study's seeds left in the folder by an earlier grid are outside it."""
    placed = _copies_of(quick_organism[0], monkeypatch)
    path = write_study(tmp_path, quick_organism[0], techniques=["baseline"], seeds=[0])
    study = yaml.safe_load(path.read_text())
    del study["organism"]
    study = {**study, "scenarios": ["quick", "default"], "organism_seeds": [3, 4]}
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    study_run.run_study(path, out, show_progress=False)  # the earlier grid: default at 3 and 4
    placed.clear()
    path.write_text(yaml.safe_dump({**study, "scenarios": ["quick", {"name": "default", "organism_seeds": [5]}]}))
    summary = study_run.run_study(path, out, show_progress=False)
    assert sorted(placed) == [("default", 5, "default-o5")]  # quick's two were placed by the earlier grid
    hashes = {seed: json.loads((out / "organisms" / f"default-o{seed}" / "organism.json").read_text())["organism_hash"]
              for seed in (3, 4, 5)}  # as placed, each under the hash its config builds
    assert len(set(hashes.values())) == 3 and summary["scenarios"]["default"]["organisms"] == {"5": hashes[5]}
    final = summary["scenarios"]["default"]["techniques"]["baseline"]["final"]
    assert final["n"] == 1 and final["n_organisms"] == 1
    quick = summary["scenarios"]["quick"]["techniques"]["baseline"]["final"]
    assert quick["n"] == 2 and quick["n_organisms"] == 2
    cfg = config.load(path, expect="study")
    assert [study_run.in_study(cfg, ("default", o, "baseline", 0)) for o in (3, 4, 5)] == [False, False, True]
    assert [study_run.in_study(cfg, ("quick", o, "baseline", 0)) for o in (3, 4, 5)] == [True, True, False]
    placed.clear()
    assert study_run.run_study(path, out, show_progress=False) == summary and placed == []
    for bad, needle in [([5, 5], "scenarios.1.organism_seeds: needs distinct seeds"),
                        ([], "scenarios.1.organism_seeds: needs distinct seeds")]:
        path.write_text(yaml.safe_dump({**study, "scenarios": ["quick", {"name": "default", "organism_seeds": bad}]}))
        with pytest.raises(config.ConfigError, match=needle):
            config.load(path, expect="study")
