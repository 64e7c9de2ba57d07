"""Watching long runs: a run's numbers, also sent to an experiment tracker through accelerate.

    doublebind distill --organism runs/quick --recipe configs/recipes/hard_sft.yaml --out runs/sft --tracker tensorboard
    tensorboard --logdir runs/sft/tracker

`training.tracker` in the recipe (or `--tracker` on `distill` and `study run`) picks one of
TensorBoard, wandb or trackio; `none`, the default, writes nothing beyond the run's own files
(metrics.jsonl, summary.json). Every tracker runs offline and writes under `<run>/tracker/`:
TensorBoard event files, wandb in offline mode (`wandb sync` uploads later, by hand; a
`WANDB_MODE=disabled` in the environment is kept, and wandb then writes nothing), trackio's
local database. Nothing here opens a network connection or reads a credential. trackio takes
one run per process (it reads its folder once), so studies refuse it (`check_tracker`).

Scalars, by tag:
    train/loss, train/lr, train/tokens_per_s       every optimiser step (x = step; tokens/s counts
                                                   the step's response tokens over its wall time)
    eval/capability_transfer, eval/misalignment_transfer, eval/capability/<family>,
    eval/misbehavior/<context>,
    audit/<signal> (honeypot, confession, prefill; student and teacher),
    auditor/<field> (the generic auditor's success@k, error rate)    every checkpoint
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from pathlib import Path

from doublebind.errors import DoublebindError, first_line

TRACKERS = ("none", "tensorboard", "wandb", "trackio")
STEP_TAGS = ("train/loss", "train/lr", "train/tokens_per_s")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def tracker_dir(out: Path) -> Path:
    return Path(out) / "tracker"


# trackio keeps one store per process: it reads TRACKIO_DIR once, when it is imported.
TRACKIO_ONE_RUN = ("trackio keeps one log folder per process (it reads TRACKIO_DIR once, when imported), so "
                   "the runs of a study, which share worker processes, would all log into the first run's folder")


def check_tracker(tracker: str, study: bool = False) -> None:
    """One plain error when `tracker`'s package is not installed (`study run` and `validate`
    check it before any organism is built; `accelerator_kwargs` before a run trains), or, in a
    `study`, when the tracker is trackio (`TRACKIO_ONE_RUN`)."""
    if tracker not in TRACKERS:
        raise DoublebindError(f"unknown tracker {tracker!r}; trackers: {', '.join(TRACKERS)}")
    if tracker == "none":
        return
    if study and tracker == "trackio":
        raise DoublebindError(f"training.tracker trackio: {TRACKIO_ONE_RUN}; use tensorboard or wandb for a "
                              f"study, and trackio with `doublebind distill`")
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
                 "trackio": is_trackio_available}[tracker]()
    if not available:
        raise DoublebindError(f"training.tracker {tracker} needs the {_PACKAGE[tracker]} package; "
                              f"pip install {_PACKAGE[tracker]}, or use --tracker none")


def accelerator_kwargs(tracker: str, out: Path | None) -> dict:
    """What `Accelerator(...)` needs for `tracker` (nothing for `none` or a run without a folder).

    Checked here so a missing package is one plain error before any training."""
    if tracker not in TRACKERS:
        raise DoublebindError(f"unknown tracker {tracker!r}; trackers: {', '.join(TRACKERS)}")
    if tracker == "none" or out is None:
        return {}
    from accelerate.utils import ProjectConfiguration

    check_tracker(tracker)
    logs = tracker_dir(out)
    return {"log_with": tracker,
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(logs))}


def _offline(tracker: str, logs: Path) -> dict:
    """Per-tracker init kwargs that keep it local and offline."""
    if tracker == "wandb":
        logs.mkdir(parents=True, exist_ok=True)  # wandb wants its `dir` to exist
        # offline, and never a login prompt; a user's WANDB_MODE=disabled (log nothing) is kept
        mode = "disabled" if os.environ.get("WANDB_MODE") == "disabled" else "offline"
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        return {"wandb": {"mode": mode, "dir": str(logs)}}
    if tracker == "trackio":
        # Its local database; no Space is named, so nothing is uploaded. trackio reads TRACKIO_DIR
        # once, at import, so a process logs to one folder: a TRACKIO_DIR the user set takes
        # every run; otherwise the first run's `<run>/tracker/`, and a later run in the same
        # process with another folder is refused (studies refuse trackio up front).
        global _trackio_run
        if _trackio_run is None and os.environ.get("TRACKIO_DIR"):
            return {"trackio": {}}
        if _trackio_run is not None and _trackio_run != logs.resolve():
            raise DoublebindError(f"training.tracker trackio: this process already logs a run to trackio in "
                                  f"{_trackio_run}, and trackio reads its folder once per process; run one "
                                  f"trackio run per process, or use tensorboard or wandb")
        os.environ["TRACKIO_DIR"] = str(logs)
        _trackio_run = logs.resolve()
        return {"trackio": {}}
    return {}


_trackio_run: Path | None = None  # the folder of this process's trackio run (`_offline`)


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b": scalar}; lists and None as strings (what trackers take as hparams)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, str):
            out[key] = str(v)  # a str subclass (torch's version) as a plain str
        elif isinstance(v, (bool, int, float)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def checkpoint_scalars(row: dict) -> dict[str, float]:
    """The numbers of a checkpoint row worth plotting, by tag (None and non-numbers left out)."""
    vals = {"eval/capability_transfer": row.get("capability_transfer"),
            "eval/misalignment_transfer": row.get("misalignment_transfer")}
    vals.update({f"eval/capability/{k}": v for k, v in (row.get("capability") or {}).items()})  # by family
    vals.update({f"eval/misbehavior/{k}": v for k, v in (row.get("misbehavior") or {}).items()})  # by context
    vals.update({f"audit/{k}": v for k, v in (row.get("audit") or {}).items()})
    for k in ("success_at_k", "error_rate"):
        vals[f"auditor/{k}"] = (row.get("auditor") or {}).get(k)
    return {k: float(v) for k, v in vals.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _tensorboard_hparams(accelerator, values: dict) -> None:
    """The run's hyperparameters in its own TensorBoard folder: accelerate writes them into a
    timestamped subfolder, which TensorBoard lists as a second run holding no scalars, and its
    `hparams.yml` into another. Here both go into the run's folder, one run in TensorBoard."""
    import yaml

    if not accelerator.is_main_process:
        return
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    writer.add_hparams(values, {}, run_name=".")  # "." : the writer's own folder, not a new one
    writer.flush()
    (Path(writer.log_dir) / "hparams.yml").write_text(yaml.safe_dump(values, sort_keys=True))


def run_name(name: str) -> str:
    """A recipe's name as the tracker's run folder: accelerate joins it to the log folder, so
    `../x` or an absolute name put the events outside the run (where `--force` never looks)."""
    return re.sub(r"[^\w.-]", "_", name).strip(".") or "run"


def _quiet_writer_threads() -> None:
    """TensorBoard writes from a thread of its own; when a write fails (a full disk) the thread
    re-raises, `threading.excepthook` prints its traceback beside the run's own one-line
    error, and the writer raises the same error in the caller at its next call, where it is
    handled. So tracebacks of that thread are not printed; every other thread's still are."""
    if getattr(threading.excepthook, "_doublebind", False):
        return
    before = threading.excepthook

    def hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread":
            return
        before(args)

    hook._doublebind = True
    threading.excepthook = hook


def _finish(accelerator) -> Exception | None:
    """Finish every tracker the accelerator holds, whatever each one's own error; the first
    such error, or None."""
    first = None
    for t in list(getattr(accelerator, "trackers", []) or []):
        try:
            t.finish()
        except Exception as e:  # a tracker already broken (its disk full) has nothing left to flush
            first = first or e
    accelerator.trackers = []
    return first


def _remove_new(logs: Path, there: set | None) -> None:
    """Remove what a failed start wrote under `logs`: the whole folder when it made it, else
    the files and folders that were not there before (`there`)."""
    if there is None:
        shutil.rmtree(logs, ignore_errors=True)
        return
    for path in sorted(set(logs.rglob("*")) - there, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass


class RunTracker:
    """One run's tracker; every method does nothing when no tracker was asked for. A tracker is
    a window on a run: one that fails mid-run is reported once and switched off, and the run
    goes on with its own files (metrics.jsonl, summary.json) complete."""

    def __init__(self, accelerator, tracker: str, out: Path | None, name: str, config: dict):
        self.accelerator, self.tracker = accelerator, tracker
        self.on = tracker != "none" and out is not None
        if self.on:
            _quiet_writer_threads()
            logs = tracker_dir(out)
            there = set(logs.rglob("*")) if logs.is_dir() else None  # what it held before this start
            try:
                flat = _flat(config)
                # TensorBoard's hyperparameters are written here, not by accelerate (`_tensorboard_hparams`)
                accelerator.init_trackers(run_name(name), config=None if tracker == "tensorboard" else flat,
                                          init_kwargs=_offline(tracker, logs))
                if tracker == "tensorboard":
                    _tensorboard_hparams(accelerator, flat)
            except Exception as e:  # the tracker's own library failing (a network call, a bad setup)
                _finish(accelerator)
                _remove_new(logs, there)  # what it wrote before failing would mix into the next run's logs
                raise DoublebindError(f"--tracker {tracker}: {tracker} failed to start ({type(e).__name__}: "
                                      f"{first_line(e)}); run without it, or fix its set-up") from None

    def _log(self, values: dict, step: int) -> None:
        if not self.on:
            return
        try:
            self.accelerator.log(values, step=step)
        except Exception as e:  # a full disk, a closed writer: the run goes on without its tracker
            self.on = False
            _finish(self.accelerator)
            print(f"note: --tracker {self.tracker} stopped logging at step {step} ({type(e).__name__}: "
                  f"{first_line(e)}); the run goes on, its own files complete", file=sys.stderr)

    def step(self, step: int, loss: float, lr: float, tokens: int, seconds: float) -> None:
        """After optimiser step `step` (1-based): its loss, learning rate and throughput."""
        self._log({"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens / max(seconds, 1e-9)}, step)

    def checkpoint(self, step: int, row: dict) -> None:
        self._log(checkpoint_scalars(row), step)

    def close(self) -> None:
        """Finish the run's trackers (their files flushed and closed). Not accelerate's
        `end_training`, which also destroys the process group: under `accelerate launch` the
        run's last barrier, and a study's next runs, still need it (every distill with a
        tracker ended in an internal error there, after writing its files)."""
        if self.on:
            self.on = False
            e = _finish(self.accelerator)
            if e is not None:
                print(f"note: --tracker {self.tracker} could not close its log ({type(e).__name__}: "
                      f"{first_line(e)}); the run's own files are complete", file=sys.stderr)
