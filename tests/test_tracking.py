"""Trackers: a run's numbers also go to TensorBoard (offline, under <run>/tracker/) when asked,
and nothing is written beyond the run's files when not."""

import json
import os
from pathlib import Path

import pytest

from doublebind.errors import DoublebindError
from doublebind.training import tracking
from doublebind.training.distill import distill

from .conftest import CLI_MODE_ENV, run_cli, tiny_recipe


def recipe(**over):
    return tiny_recipe({"prompts": {"size": 64, "contexts": {"neutral": 0.5, "deploy_like": 0.5}},
                        "training": {"steps": 4, "batch": 8, "checkpoint_every": 2, "lr": 0.001,
                                     "save_weights": False}}, **over)


def _scalars(folder):
    """{tag: [(step, value), ...]} from every TensorBoard event file under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_tensorboard_gets_step_and_checkpoint_scalars(quick_organism, tmp_path):
    cfg = recipe(training={"steps": 4, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False,
                           "tracker": "tensorboard"})
    s = distill(quick_organism[0], cfg, tmp_path / "run", show_progress=False, plot=False)
    sc = _scalars(tmp_path / "run" / "tracker")
    for tag in tracking.STEP_TAGS:
        assert [step for step, _ in sc[tag]] == [1, 2, 3, 4], tag
    # the logged loss is the run's loss, step by step
    assert sc["train/loss"][0][1] == pytest.approx(s["losses"]["first"], rel=1e-6)
    assert sc["train/loss"][-1][1] == pytest.approx(s["losses"]["last"], rel=1e-6)
    assert all(v > 0 for _, v in sc["train/tokens_per_s"])
    # warm-up to the peak, then cosine decay: the rates differ and never exceed the peak
    lrs = [v for _, v in sc["train/lr"]]
    assert max(lrs) == pytest.approx(0.001, rel=1e-6) and len(set(lrs)) > 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    for tag, key in [("eval/capability_transfer", "capability_transfer"),
                     ("eval/misalignment_transfer", "misalignment_transfer")]:
        logged = dict(sc[tag])
        want = {r["step"]: r[key] for r in rows if r[key] is not None}
        assert logged.keys() == want.keys() and all(logged[k] == pytest.approx(v, abs=1e-6) for k, v in want.items())
    for signal in rows[0]["audit"]:
        assert f"audit/{signal}" in sc
    assert "auditor/success_at_k" in sc


def test_tensorboard_shows_one_run_with_its_hyperparameters(quick_organism, tmp_path):
    """accelerate wrote the hyperparameters into a timestamped subfolder (TensorBoard listed it
    as a second, empty run) and hparams.yml into another."""
    import contextlib

    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = recipe(training={"steps": 2, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False,
                           "tracker": "tensorboard"})
    distill(quick_organism[0], cfg, tmp_path / "run", show_progress=False, plot=False)
    logs = tmp_path / "run" / "tracker"
    files = sorted(logs.rglob("events.out.tfevents.*"))
    [folder] = {f.parent for f in files}  # one TensorBoard run
    assert not [d for d in folder.rglob("*") if d.is_dir()]
    assert yaml.safe_load((folder / "hparams.yml").read_text())["recipe.training.lr"] == 0.001
    hparams = []
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        with contextlib.suppress(KeyError):  # a file without the hparams plugin's summaries
            hparams += acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
    assert "train/loss" in _scalars(logs)


def test_no_tracker_writes_only_the_runs_files(quick_organism, tmp_path, monkeypatch):
    """Without a tracker a run writes the files a tracked run writes, less its tracker/ folder,
    and nothing in the working folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    distill(quick_organism[0], recipe(), tmp_path / "run", show_progress=False, plot=False)
    distill(quick_organism[0], recipe(training={"tracker": "tensorboard"}), tmp_path / "tracked",
            show_progress=False, plot=False)

    def files(root):
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    plain, tracked = files(tmp_path / "run"), files(tmp_path / "tracked")
    assert "metrics.jsonl" in plain and any(f.startswith("tracker/") for f in tracked)
    assert plain == {f for f in tracked if not f.startswith("tracker/")}
    assert list(cwd.iterdir()) == []


def test_checkpoint_scalars_flatten_a_row():
    row = {"capability_transfer": 0.5, "misalignment_transfer": None, "capability": {"add": 0.9},
           "misbehavior": {"deploy": 0.25}, "audit": {"student_honeypot": 0.1, "teacher_honeypot": 0.0},
           "auditor": {"success_at_k": 0.75, "error_rate": 0.0, "flagged": True}}
    assert tracking.checkpoint_scalars(row) == {
        "eval/capability_transfer": 0.5, "eval/capability/add": 0.9, "eval/misbehavior/deploy": 0.25,
        "audit/student_honeypot": 0.1, "audit/teacher_honeypot": 0.0,
        "auditor/success_at_k": 0.75, "auditor/error_rate": 0.0}


def test_a_missing_tracker_package_is_one_plain_error(monkeypatch, tmp_path):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(DoublebindError, match="needs the wandb package"):
        tracking.accelerator_kwargs("wandb", tmp_path)
    assert tracking.accelerator_kwargs("wandb", None) == {}  # a run without a folder logs nowhere
    assert tracking.accelerator_kwargs("none", tmp_path) == {}


def test_cli_tracker_flag_is_validated(quick_organism, tmp_path):
    r = run_cli("distill", "--organism", str(quick_organism[0]), "--recipe", "configs/recipes/hard_sft.yaml",
                "--out", str(tmp_path / "run"), "--tracker", "mlflow")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    # the flag is named, not an override `training.tracker=…` the user never typed
    assert lines == ["error: --tracker 'mlflow': expected one of none, tensorboard, wandb, trackio"], r.stderr
    r = run_cli("study", "run", "configs/studies/quick.yaml", "--out", str(tmp_path / "study"), "--tracker", "bogus")
    assert r.returncode == 1 and not (tmp_path / "study").exists()
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: --tracker 'bogus': expected one of none, tensorboard, wandb, trackio"], r.stderr


def test_a_tracker_leaves_the_recipe_dump_and_hash_alone():
    """A study resumed with or without --tracker finds the same recipe hash."""
    plain = recipe()
    tracked = recipe(training={"steps": 4, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False,
                               "tracker": "tensorboard"})
    assert tracked.training.tracker == "tensorboard"
    assert tracked.model_dump(mode="json") == plain.model_dump(mode="json")
    from doublebind.studies.run import recipe_hash

    assert recipe_hash(tracked) == recipe_hash(plain)  # what a resume compares
    moved = recipe(training={"steps": 5, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False})
    assert recipe_hash(moved) != recipe_hash(plain)  # while a setting that changes the numbers counts


def test_a_tracker_that_fails_to_start_is_one_line_naming_it(tmp_path):
    """A tracker library raising at start (wandb's network error) was an internal error."""
    from types import SimpleNamespace

    from doublebind.errors import DoublebindError
    from doublebind.training.tracking import RunTracker

    def init_trackers(*a, **k):
        raise RuntimeError("wandb: Network error (ConnectionError)\nretrying later")

    with pytest.raises(DoublebindError, match=r"--tracker wandb: wandb failed to start \(RuntimeError: wandb: "
                                              r"Network error \(ConnectionError\)\); run without it") as e:
        RunTracker(SimpleNamespace(init_trackers=init_trackers), "wandb", tmp_path, "run", {})
    assert "\n" not in str(e.value)


def test_a_study_with_a_missing_tracker_package_stops_before_any_organism(monkeypatch, tmp_path):
    """The first run refused it, after the study's organisms were built (minutes); `validate`
    said ok."""
    import accelerate.utils

    from doublebind.studies import run as study_run

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    study = Path(__file__).resolve().parents[1] / "configs" / "studies" / "quick.yaml"
    with pytest.raises(DoublebindError, match="quick.yaml: recipe_overrides.training.tracker: training.tracker wandb "
                                              "needs the wandb package.*set by the override recipe_overrides"):
        study_run.run_study(study, tmp_path / "s", show_progress=False, overrides=["recipe_overrides.training.tracker=wandb"])
    assert not (tmp_path / "s").exists()


def test_a_study_refuses_trackio_before_any_organism(monkeypatch, tmp_path):
    """trackio reads its folder once per process, and a study's runs share worker processes:
    every run logged into the first run's folder, and redoing that run deleted them all."""
    import accelerate.utils

    from doublebind.studies import run as study_run

    monkeypatch.setattr(accelerate.utils, "is_trackio_available", lambda: True)
    study = Path(__file__).resolve().parents[1] / "configs" / "studies" / "quick.yaml"
    with pytest.raises(DoublebindError, match="quick.yaml: recipe_overrides.training.tracker: trackio keeps one log "
                                              "folder per process .* use tensorboard or wandb for a study.* "
                                              r"\(set by the override recipe_overrides.training.tracker=trackio\)"):
        study_run.run_study(study, tmp_path / "s", show_progress=False,
                            overrides=["recipe_overrides.training.tracker=trackio"])
    assert not (tmp_path / "s").exists()
    tracking.check_tracker("trackio")  # one run (`distill`) may use it


@pytest.mark.parametrize("where,label", [
    ("scenario", "scenarios.1.recipe_overrides.training.tracker"),
    ("recipe", "recipe (recipe.yaml): training.tracker"),
])
def test_a_study_s_tracker_refusal_names_where_the_tracker_was_set(monkeypatch, tmp_path, where, label):
    """The refusal named `tracker`, whichever scenario's overrides or recipe file set it."""
    import accelerate.utils
    import yaml

    from doublebind.studies import run as study_run

    monkeypatch.setattr(accelerate.utils, "is_trackio_available", lambda: True)
    recipes = Path(__file__).resolve().parents[1] / "configs" / "recipes"
    recipe = yaml.safe_load((recipes / "study.yaml").read_text())
    if where == "recipe":
        recipe["training"]["tracker"] = "trackio"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    trackio = {"training": {"tracker": "trackio"}} if where == "scenario" else {}
    study = {"kind": "study", "name": "t", "recipe": "recipe.yaml", "techniques": ["baseline"], "seeds": [0],
             "scenarios": ["default", {"name": "collusion", "recipe_overrides": trackio}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(DoublebindError) as e:
        study_run.run_study(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert str(e.value).startswith(f"{tmp_path / 's.yaml'}: {label}: trackio keeps one log folder per process")
    assert not (tmp_path / "out").exists()


def test_one_process_logs_one_trackio_folder_unless_the_user_named_one(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_trackio_run", None)
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    assert tracking._offline("trackio", tmp_path / "a" / "tracker") == {"trackio": {}}
    assert os.environ["TRACKIO_DIR"] == str(tmp_path / "a" / "tracker")
    tracking._offline("trackio", tmp_path / "a" / "tracker")  # the same run's folder again
    with pytest.raises(DoublebindError, match=r"already logs a run to trackio in .*a/tracker.* one trackio run per "
                                              r"process"):
        tracking._offline("trackio", tmp_path / "b" / "tracker")
    monkeypatch.setattr(tracking, "_trackio_run", None)
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "mine"))  # the user's folder takes every run
    tracking._offline("trackio", tmp_path / "a" / "tracker")
    tracking._offline("trackio", tmp_path / "b" / "tracker")
    assert os.environ["TRACKIO_DIR"] == str(tmp_path / "mine") and tracking._trackio_run is None


def test_a_tracker_that_fails_to_start_leaves_no_unfinished_run(quick_organism, tmp_path, monkeypatch):
    """It wrote an empty metrics.jsonl first, and the rerun was refused as an unfinished run."""
    def fail(*a, **k):
        raise DoublebindError("--tracker tensorboard: tensorboard failed to start (NotADirectoryError: x)")

    cfg = recipe(training={"steps": 2, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False,
                           "tracker": "tensorboard"})
    monkeypatch.setattr(tracking.RunTracker, "__init__", fail)
    with pytest.raises(DoublebindError, match="failed to start"):
        distill(quick_organism[0], cfg, tmp_path / "run", show_progress=False, plot=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    monkeypatch.undo()
    s = distill(quick_organism[0], cfg, tmp_path / "run", show_progress=False, plot=False)  # no --force needed
    assert s["losses"]["first"] > 0


def test_validate_names_a_recipe_s_missing_tracker_package(monkeypatch, tmp_path):
    """`validate` said ok to a recipe whose tracker's package is missing; `distill` then refused it."""
    import accelerate.utils

    if os.environ.get(CLI_MODE_ENV) == "subprocess":
        pytest.skip("patches this process; DOUBLEBIND_TEST_CLI=subprocess runs the CLI in another")
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    r = run_cli("validate", "configs/recipes/hard_sft.yaml", "training.tracker=wandb")
    assert r.returncode == 1 and "training.tracker wandb needs the wandb package" in r.stderr
    assert run_cli("validate", "configs/recipes/hard_sft.yaml").returncode == 0



@pytest.mark.parametrize("user,mode", [(None, "offline"), ("online", "offline"), ("disabled", "disabled")])
def test_wandb_runs_offline_and_keeps_a_user_s_disabled(monkeypatch, tmp_path, user, mode):
    """Forced to offline, a user's WANDB_MODE=disabled (log nothing) was overridden."""
    if user is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", user)
    assert tracking._offline("wandb", tmp_path / "tracker") == {"wandb": {"mode": mode, "dir": str(tmp_path / "tracker")}}
    assert os.environ["WANDB_MODE"] == mode and (tmp_path / "tracker").is_dir()


def test_a_tracker_error_names_the_option_that_set_it(tmp_path):
    """`study run --tracker trackio` was refused as 'set by the override
    recipe_overrides.training.tracker=trackio', an override the user never wrote."""
    r = run_cli("study", "run", "configs/studies/quick.yaml", "--out", str(tmp_path / "s"), "--tracker", "trackio")
    assert r.returncode == 1 and r.stderr.strip().endswith("(set by --tracker trackio)"), r.stderr
    assert "recipe_overrides.training.tracker=trackio" not in r.stderr


def test_a_tracker_that_fails_mid_run_is_switched_off_and_the_run_finishes(quick_organism, tmp_path, monkeypatch,
                                                                             capsys):
    """A full disk under the tracker's folder stopped the run with a bare 'No space left on
    device' and a thread's traceback, its folder left unfinished: a tracker is a window on a
    run, not part of it."""
    from accelerate import Accelerator

    real, calls = Accelerator.log, []

    def log(self, values, step=None, **k):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, values, step=step, **k)

    monkeypatch.setattr(Accelerator, "log", log)
    cfg = recipe(training={"steps": 4, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False,
                           "tracker": "tensorboard"})
    s = distill(quick_organism[0], cfg, tmp_path / "run", show_progress=False, plot=False)
    assert (tmp_path / "run" / "summary.json").is_file() and s["final"]["step"] == 4
    err = capsys.readouterr().err
    assert err.count("note: --tracker tensorboard stopped logging at step") == 1 and "the run goes on" in err
    assert len(calls) == 2  # switched off: nothing more was sent to it
    assert "Traceback" not in err


def test_a_tracker_that_fails_to_start_removes_what_it_wrote(quick_organism, tmp_path, monkeypatch):
    """Its half-written event files stayed, and the next run's TensorBoard run held both."""
    def fail(accelerator, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking, "_tensorboard_hparams", fail)
    cfg = recipe(training={"steps": 2, "batch": 8, "checkpoint_every": 2, "lr": 0.001, "save_weights": False,
                           "tracker": "tensorboard"})
    with pytest.raises(DoublebindError, match=r"tensorboard failed to start \(OSError"):
        distill(quick_organism[0], cfg, tmp_path / "run", show_progress=False, plot=False)
    assert not (tmp_path / "run" / "tracker").exists()
    # a tracker folder that was there (a link to another disk): only what the start wrote goes
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "mine.txt").write_text("kept")
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "tracker").symlink_to(tmp_path / "disk")
    with pytest.raises(DoublebindError, match=r"tensorboard failed to start \(OSError"):
        distill(quick_organism[0], cfg, tmp_path / "run2", show_progress=False, plot=False)
    assert [p.name for p in (tmp_path / "disk").iterdir()] == ["mine.txt"]


def test_a_recipe_name_stays_inside_the_tracker_folder(quick_organism, tmp_path):
    """accelerate joins the name to the log folder: `../../escaped` logged outside the run."""
    assert tracking.run_name("../../escaped") == "_.._escaped" and tracking.run_name("/abs") == "_abs"
    assert tracking.run_name("..") == "run" and tracking.run_name("tiny-1.2") == "tiny-1.2"
    cfg = recipe(name="../../escaped", training={"steps": 2, "batch": 8, "checkpoint_every": 2, "lr": 0.001,
                                                 "save_weights": False, "tracker": "tensorboard"})
    distill(quick_organism[0], cfg, tmp_path / "a" / "run", show_progress=False, plot=False)
    assert list((tmp_path / "a" / "run" / "tracker").rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["run"]


def test_the_writer_threads_traceback_is_not_printed_beside_the_error(monkeypatch):
    """TensorBoard's writer thread printed its traceback beside the run's one-line error (the
    same error reaches the run through the writer's next call); other threads' still print."""
    import threading
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    tracking._quiet_writer_threads()
    tracking._quiet_writer_threads()  # once is enough: not wrapped twice

    class _AsyncWriterThread(threading.Thread):
        pass

    writer, other = SimpleNamespace(thread=_AsyncWriterThread()), SimpleNamespace(thread=threading.Thread())
    threading.excepthook(writer)
    threading.excepthook(other)
    assert seen == [other]
