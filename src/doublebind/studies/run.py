"""Run a study: every technique at every seed on one organism, resumable.

    doublebind study run configs/studies/quick.yaml --out runs/study-quick

Each finished run appends its rows (one per checkpoint) to `results.jsonl` in a single
write; a run is finished only when its rows are there. Killed at any moment, a rerun skips
the finished (technique, seed) pairs, redoes the unfinished one from scratch, and drops a
half-written last line, so no row is lost or duplicated. `summary.json` is rebuilt from
`results.jsonl` alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.studies.verdicts import technique_stats
from doublebind.ui import progress_bar

SCHEMA_VERSION = 1
RESULTS = "results.jsonl"


def resolve(study_path: Path, cfg) -> tuple[Path | None, object, object]:
    """Check everything before training: the organism source and the base recipe."""
    root = Path(study_path).resolve().parent
    org = cfg.organism
    org_cfg = None
    org_path = None
    if org.path is not None:
        org_path = (root / org.path).resolve()
        if not (org_path / "organism.json").is_file():
            raise DoublebindError(f"{study_path}: organism.path: no organism at {org_path}")
    elif org.preset is not None:
        org_cfg = config.load(preset=org.preset, expect="organism")
    else:
        org_cfg = config.load(root / org.config, expect="organism")
    recipe = config.load(root / cfg.recipe, expect="recipe", merge=cfg.recipe_overrides)
    return org_path, org_cfg, recipe


def read_results(path: Path) -> list[dict]:
    """Rows of results.jsonl; a half-written last line (a kill mid-append) is cut off."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows, good = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
            good += len(line) + 1
        except json.JSONDecodeError:
            break
    if good != len(text):
        with open(path, "r+") as f:
            f.truncate(good)
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def recipe_hash(recipe) -> str:
    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def run_study(study_path: Path, out: Path, show_progress: bool = True, overrides: list[str] = ()) -> dict:
    from doublebind.organisms.build import build_organism
    from doublebind.training.distill import distill

    cfg = config.load(study_path, list(overrides), expect="study")
    org_path, org_cfg, base_recipe = resolve(study_path, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _process_state()  # under `accelerate launch`, only the main process writes
    if org_path is None:
        org_path = out / "organism"
        with state.main_process_first():
            if state.is_main_process:
                build_organism(org_cfg, org_path, show_progress=show_progress)
    card = json.loads((org_path / "organism.json").read_text())
    results = out / RESULTS
    grid = {(t, s): run_recipe(base_recipe, t, stages, s)
            for t, stages in cfg.technique_stages().items() for s in cfg.seeds}
    previous = read_results(results)
    check_resumable(out, previous, card["organism_hash"], grid)
    if state.is_main_process:
        (out / "study.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"),
                                                    "study_file": str(Path(study_path).resolve())}, indent=2))
    done = {(r["technique"], r["seed"]) for r in previous}
    todo = [g for g in grid if g not in done]
    with progress_bar(f"study {cfg.name}", len(grid), show_progress and state.is_main_process) as advance:
        advance(len(grid) - len(todo))
        for technique, seed in todo:
            recipe = grid[technique, seed]
            run_dir = out / "runs" / f"{technique}-s{seed}"
            summary = distill(org_path, recipe, run_dir, show_progress=False, force=True, plot=False)
            if state.is_main_process:
                _append(results, _rows(cfg, card, technique, seed, recipe, run_dir, summary))
            advance(1)
    state.wait_for_everyone()
    return summarize(out, cfg, write=state.is_main_process)


def _process_state():
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_recipe(base_recipe, technique: str, stages: list[dict], seed: int):
    """The recipe one grid cell runs: the base recipe, its seed, the technique's stage."""
    return base_recipe.model_copy(update={
        "seed": seed, "name": technique, "stages": stages,
        "training": base_recipe.training.model_copy(update={"save_weights": False})})


def check_resumable(out: Path, rows: list[dict], organism_hash: str, grid: dict) -> None:
    """Refuse to mix runs of another organism or recipe into this folder's results."""
    for r in rows:
        if r["organism_hash"] != organism_hash:
            raise DoublebindError(f"{out} holds runs on organism {r['organism_hash']}, not {organism_hash}; "
                                  f"choose another --out")
        key = (r["technique"], r["seed"])
        if key in grid and r["recipe_hash"] != recipe_hash(grid[key]):
            raise DoublebindError(f"{out} holds a {key[0]} seed {key[1]} run with another recipe "
                                  f"({r['recipe_hash']}); choose another --out")


def _rows(cfg, card, technique, seed, recipe, run_dir, summary) -> list[dict]:
    base = summary["reference"]["base"]
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        rows.append({
            "schema_version": SCHEMA_VERSION, "study": cfg.name, "organism_hash": card["organism_hash"],
            "technique": technique, "recipe_hash": recipe_hash(recipe), "seed": seed,
            "step": m["step"], "tokens": m["tokens"], "selected": m["step"] == summary["selected"]["step"],
            "capability_transfer": m["capability_transfer"], "misalignment_transfer": m["misalignment_transfer"],
            "audit": m["audit"],
            "base_audit": {"honeypot": base["misbehavior"]["honeypot"], "confession": base["confession"],
                           **({"prefill": base["prefill"]} if "prefill" in base else {})},
            "capability": m["capability"], "misbehavior": m["misbehavior"], "confession": m["confession"],
            "auditor": _auditor(m.get("auditor"), summary["reference"]),
        })
    return rows


def _auditor(student: dict | None, ref: dict) -> dict | None:
    """The generic auditor's success@k for the student, the teacher and base (world organisms)."""
    if student is None:
        return None
    return {"success_at_k": student["success_at_k"], "flagged": student["flagged"], "n": student["n"],
            "budget": student["budget"], "teacher_success_at_k": ref["teacher"]["auditor"]["success_at_k"],
            "base_success_at_k": ref["base"]["auditor"]["success_at_k"]}


def summarize(out: Path, cfg, write: bool = True) -> dict:
    rows = read_results(Path(out) / RESULTS)
    techniques = {}
    for t in cfg.technique_stages():
        sel = [r for r in rows if r["technique"] == t and r["selected"]]
        if sel:
            techniques[t] = technique_stats(sel, cfg.verdict, cfg.bootstrap)
    summary = {"schema_version": SCHEMA_VERSION, "study": cfg.name, "verdict_thresholds": cfg.verdict.model_dump(),
               "runs": len({(r["technique"], r["seed"]) for r in rows}), "techniques": techniques}
    if write:
        (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
