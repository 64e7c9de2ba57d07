"""Run a study: every technique at every seed on one organism, resumable.

    doublebind study run configs/studies/quick.yaml --out runs/study-quick

`results.jsonl` is append-only and self-checking. Each finished run appends its rows (one
per checkpoint) in a single write, and every row carries its run's id, the number of rows
the run wrote (`run_rows`) and the sha256 of the canonical JSON of those rows
(`run_sha256`). A run counts only when all its rows are there and hash to its checksum, so
a run whose last rows are missing, even at a line boundary, is incomplete and is redone on
resume; its leftover rows stay in the file and are ignored.

Nothing in the file is ever deleted or rewritten. A corrupt line anywhere (not JSON, not a
row, a run failing its checksum) stops `study run` with its line number after copying it
to `results.quarantine.jsonl` beside the file; the one exception is a half-written last
line (no final newline: a kill mid-append), which `study run` moves to the quarantine file
so that kill-and-resume keeps working. `summary.json` is always recomputed from the rows;
`doublebind report` reads the rows the same way and writes nothing here.

Runs go to worker processes (`--workers`, `studies/executor.py`); this process alone appends
to results.jsonl, once per finished run, so with several workers runs appear in the order
they finish. Each run computes with one thread however many workers there are, so
summary.json does not depend on the worker count.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from doublebind import config
from doublebind.errors import ConfigError, DoublebindError
from doublebind.paths import check_out_dir
from doublebind.studies.verdicts import technique_stats
from doublebind.ui import progress_bar

SCHEMA_VERSION = 2
RESULTS = "results.jsonl"
QUARANTINE = "results.quarantine.jsonl"
_ROW_KEYS = {"technique": str, "seed": int, "step": int, "selected": bool, "organism_hash": str,
             "recipe_hash": str, "run_id": str, "run_rows": int, "run_sha256": str}


def resolve(study_path: Path, cfg) -> tuple[Path | None, object, object]:
    """Check everything before training: the organism source, the base recipe and the
    recipe overrides (`doublebind validate` runs this too). Errors name the study field."""
    from doublebind.organisms.domain import read_card

    root = Path(study_path).resolve().parent
    org = cfg.organism
    org_cfg = None
    org_path = None

    def field(name: str, fn, strip: Path | None = None):
        try:
            return fn()
        except DoublebindError as e:
            msg = str(e)
            if strip is not None:
                msg = msg.removeprefix(f"{strip}: ")
            raise ConfigError(f"{study_path}: {name}: {msg}") from None

    if org.path is not None:
        org_path = (root / org.path).resolve()
        if not (org_path / "organism.json").is_file():
            raise ConfigError(f"{study_path}: organism.path: no organism at {org_path}")
        field("organism.path", lambda: read_card(org_path, verified=False))
    elif org.preset is not None:
        org_cfg = field("organism.preset", lambda: config.load(preset=org.preset, expect="organism"))
    else:
        org_cfg = field("organism.config", lambda: config.load(root / org.config, expect="organism"))
    recipe_path = root / cfg.recipe
    field("recipe", lambda: config.load(recipe_path, expect="recipe"))
    recipe = field("recipe_overrides", lambda: config.load(recipe_path, expect="recipe", merge=cfg.recipe_overrides),
                   strip=recipe_path)
    return org_path, org_cfg, recipe


# ---- results.jsonl ---------------------------------------------------------------------

def run_checksum(rows: list[dict]) -> str:
    """sha256 of the canonical JSON of a run's rows, without their `run_sha256` field."""
    canon = json.dumps([{k: v for k, v in r.items() if k != "run_sha256"} for r in rows],
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def seal_run(rows: list[dict], run_id: str) -> list[dict]:
    """A run's rows with its id, row count and checksum added to each row."""
    rows = [{**r, "run_id": run_id, "run_rows": len(rows)} for r in rows]
    sha = run_checksum(rows)
    return [{**r, "run_sha256": sha} for r in rows]


@dataclass
class Scan:
    """What `results.jsonl` holds, read without changing it."""

    path: Path
    runs: dict[tuple[str, int], list[dict]] = field(default_factory=dict)  # complete runs, first per (technique, seed)
    parsed: list[dict] = field(default_factory=list)  # every well-formed row, complete run or not
    incomplete: list[dict] = field(default_factory=list)  # {technique, seed, found, expected, lines} without a complete run
    ignored_rows: int = 0  # rows of interrupted or repeated runs that a complete run supersedes
    bad: list[tuple[int, bytes, str]] = field(default_factory=list)  # (line number, raw bytes, why)
    torn: tuple[int, bytes, int] | None = None  # half-written last line: (line number, raw bytes, byte offset)
    legacy: list[int] = field(default_factory=list)  # lines of rows from an older schema

    @property
    def rows(self) -> list[dict]:
        return [r for rows in self.runs.values() for r in rows]

    def check(self) -> None:
        """Raise on what a reader cannot use: corrupt lines, rows of an older schema."""
        if self.bad:
            raise DoublebindError(f"{self.path}: {describe_bad(self.bad)}")
        if self.legacy:
            raise DoublebindError(f"{self.path}: {_lines(self.legacy)} hold rows of an older doublebind "
                                  f"(schema version < {SCHEMA_VERSION}, no run checksums) that cannot be "
                                  f"checked; run the study into a new --out folder")


def _lines(nums: list[int]) -> str:
    if len(nums) == 1:
        return f"line {nums[0]}"
    shown = ", ".join(str(n) for n in nums[:8])
    return f"lines {shown}" + (f" and {len(nums) - 8} more" if len(nums) > 8 else "")


def describe_bad(bad: list[tuple[int, bytes, str]]) -> str:
    """'line 5 is corrupt (why)' or 'lines 4, 5, 6 are corrupt (line 4: why)'."""
    if len(bad) == 1:
        return f"line {bad[0][0]} is corrupt ({bad[0][2]})"
    return f"{_lines([b[0] for b in bad])} are corrupt (line {bad[0][0]}: {bad[0][2]})"


def _row_problem(obj) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    for key, typ in _ROW_KEYS.items():
        if key not in obj:
            return f"no '{key}'"
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            return f"'{key}' is not a {typ.__name__}"
    if obj["run_rows"] < 1:
        return "'run_rows' is not positive"
    return None


def scan_results(path: Path) -> Scan:
    """Read `results.jsonl` into complete runs, incomplete runs and corrupt lines; write nothing."""
    path = Path(path)
    scan = Scan(path)
    if not path.is_file():
        return scan
    data = path.read_bytes()
    pieces = data.split(b"\n")
    tail = pieces.pop()  # b"" when the file ends with a newline
    groups: dict[str, list[tuple[int, dict]]] = {}
    offset = 0
    for n, raw in enumerate(pieces, start=1):
        offset += len(raw) + 1
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            scan.bad.append((n, raw, "not UTF-8 text"))
            continue
        except json.JSONDecodeError as e:
            scan.bad.append((n, raw, f"not valid JSON: {e.msg}"))
            continue
        if isinstance(obj, dict) and isinstance(obj.get("schema_version"), int) \
                and obj["schema_version"] < SCHEMA_VERSION and "run_sha256" not in obj:
            scan.legacy.append(n)
            continue
        why = _row_problem(obj)
        if why:
            scan.bad.append((n, raw, f"not a results row: {why}"))
            continue
        scan.parsed.append(obj)
        groups.setdefault(obj["run_id"], []).append((n, obj))
    if tail:
        scan.torn = (len(pieces) + 1, tail, len(data) - len(tail))
    partial: dict[tuple[str, int], list[dict]] = {}
    for run_id, members in groups.items():
        rows = [r for _, r in members]
        lines = [n for n, _ in members]
        first = rows[0]
        same = all((r["technique"], r["seed"], r["run_rows"], r["run_sha256"]) ==
                   (first["technique"], first["seed"], first["run_rows"], first["run_sha256"]) for r in rows)
        key = (first["technique"], first["seed"])
        if not same:
            why = f"run {run_id} has rows of different runs"
        elif len(rows) > first["run_rows"]:
            why = f"run {run_id} has {len(rows)} rows, it wrote {first['run_rows']}"
        elif len(rows) < first["run_rows"]:
            partial.setdefault(key, []).append({"technique": key[0], "seed": key[1], "found": len(rows),
                                                "expected": first["run_rows"], "lines": lines})
            continue
        elif run_checksum(rows) != first["run_sha256"]:
            why = f"run {run_id} ({_lines(lines)}) fails its checksum"
        else:
            if key in scan.runs:
                scan.ignored_rows += len(rows)  # a repeated run: the first one counts
            else:
                scan.runs[key] = rows
            continue
        scan.bad.extend((n, pieces[n - 1], why) for n in lines)
    scan.bad.sort(key=lambda b: b[0])
    for key, parts in partial.items():
        if key in scan.runs:
            scan.ignored_rows += sum(p["found"] for p in parts)
        else:
            scan.incomplete.append(parts[-1])
            scan.ignored_rows += sum(p["found"] for p in parts[:-1])
    return scan


def read_results(path: Path) -> list[dict]:
    """Rows of the complete runs in `results.jsonl` (one run per technique and seed); raises
    on a corrupt line. Reads only: a half-written last line is left where it is, ignored."""
    scan = scan_results(path)
    scan.check()
    return scan.rows


def _quarantine_record(n: int, raw: bytes, why: str, moved: bool) -> dict:
    rec = {"line": n, "reason": why, "moved": moved, "source": RESULTS}
    try:
        rec["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        rec["raw_base64"] = base64.b64encode(raw).decode()
    return rec


def _quarantine(results: Path, records: list[dict]) -> Path:
    """Append `records` to the quarantine file beside `results` (each at most once)."""
    q = results.with_name(QUARANTINE)
    seen = set()
    if q.is_file():
        for line in q.read_text(errors="replace").splitlines():
            try:
                seen.add(json.dumps(json.loads(line), sort_keys=True))
            except json.JSONDecodeError:
                pass
    new = [r for r in records if json.dumps(r, sort_keys=True) not in seen]
    if new:
        with open(q, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
    return q


def settle_results(scan: Scan) -> Scan:
    """Before a resume: stop on corrupt lines (copied to the quarantine file, never removed
    from results.jsonl); move a half-written last line to the quarantine file."""
    results = scan.path
    if scan.bad:
        q = _quarantine(results, [_quarantine_record(n, raw, why, False) for n, raw, why in scan.bad])
        raise DoublebindError(f"{results}: {describe_bad(scan.bad)}; copied to {q.name}, {results.name} left "
                              f"as it is; repair or remove the bad lines by hand, then rerun")
    scan.check()
    if scan.torn is not None:
        n, raw, offset = scan.torn
        _quarantine(results, [_quarantine_record(n, raw, "half-written last line (a kill mid-append)", True)])
        with open(results, "r+b") as f:
            if f.seek(0, os.SEEK_END) == offset + len(raw):  # unchanged since the scan
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        scan.torn = None
    return scan


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def recipe_hash(recipe) -> str:
    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def run_study(study_path: Path, out: Path, show_progress: bool = True, overrides: list[str] = (),
              workers: int | None = 1) -> dict:
    """Run the study's missing runs, `workers` at a time (None: `executor.workers_for`'s
    default, what the CLI uses); then recompute summary.json."""
    from doublebind.studies.executor import run_jobs, workers_for

    cfg = config.load(study_path, list(overrides), expect="study")
    org_path, org_cfg, base_recipe = resolve(study_path, cfg)
    n_workers = workers_for(workers)  # a bad DOUBLEBIND_WORKERS stops here, before any work
    out = Path(out)
    check_out_dir(out, "--out", what="a study")
    out.mkdir(parents=True, exist_ok=True)
    state = _process_state()  # under `accelerate launch`, only the main process writes
    if org_path is None:
        org_path = out / "organism"
        with state.main_process_first():
            if state.is_main_process:
                place_organism(org_cfg, org_path, show_progress)
    card = json.loads((org_path / "organism.json").read_text())
    results = out / RESULTS
    grid = {(t, s): run_recipe(base_recipe, t, stages, s)
            for t, stages in cfg.technique_stages().items() for s in cfg.seeds}
    scan = scan_results(results)
    if state.is_main_process:
        settle_results(scan)
    else:
        scan.check()
    check_resumable(out, scan.parsed, card["organism_hash"], grid)
    if state.is_main_process:
        (out / "study.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"),
                                                    "study_file": str(Path(study_path).resolve())}, indent=2))
    todo = [g for g in grid if g not in scan.runs]
    run_ids = {r["run_id"] for r in scan.parsed}
    if state.is_main_process:
        from doublebind.ui import console

        for inc in scan.incomplete:
            if (inc["technique"], inc["seed"]) in grid:
                console.print(f"redoing the incomplete run {inc['technique']} seed {inc['seed']} "
                              f"({inc['found']} of its {inc['expected']} rows in {RESULTS})", highlight=False)
    jobs = {(technique, seed): (org_path, grid[technique, seed], out / "runs" / f"{technique}-s{seed}")
            for technique, seed in todo}
    with progress_bar(f"study {cfg.name}", len(grid), show_progress and state.is_main_process,
                      unit="runs") as advance:
        advance(len(grid) - len(todo))

        def finished(key, summary) -> None:  # in this process, as each run ends: one append per run
            technique, seed = key
            _, recipe, run_dir = jobs[key]
            if state.is_main_process:
                run_id = next(i for k in range(len(run_ids) + 1)
                              if (i := f"{technique}-s{seed}-a{k}") not in run_ids)
                run_ids.add(run_id)
                _append(results, seal_run(_rows(cfg, card, technique, seed, recipe, run_dir, summary), run_id))
            advance(1)

        run_jobs(distill_run, jobs, 1 if state.num_processes > 1 else n_workers, finished,
                 label=lambda key: f"{key[0]} seed {key[1]}")
    state.wait_for_everyone()
    return summarize(out, cfg, write=state.is_main_process)


def distill_run(org_path: Path, recipe, run_dir: Path) -> dict:
    """One run of the grid (in a worker process, or in this one): its summary."""
    from doublebind.training.distill import distill

    return distill(org_path, recipe, run_dir, show_progress=False, force=True, plot=False)


def place_organism(org_cfg, dest: Path, show_progress: bool = True) -> None:
    """Build the study's organism (or copy it from the cache) into `dest`, atomically: it is
    made beside `dest` and renamed into place, so a kill mid-copy never leaves a half
    organism that the next resume would refuse."""
    import shutil

    from doublebind.errors import VerificationError
    from doublebind.organisms.build import build_organism

    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")

    def swap() -> None:
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)

    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_organism(org_cfg, tmp, show_progress=show_progress)
    except VerificationError:
        swap()  # the failed organism's card stays in the study folder, as it always did
        raise
    swap()


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


def compute_summary(runs: dict[tuple[str, int], list[dict]], cfg) -> dict:
    """Per-technique statistics and verdicts from the rows of complete runs."""
    techniques = {}
    for t in cfg.technique_stages():
        sel = sorted((r for (tech, _), rows in runs.items() if tech == t for r in rows if r["selected"]),
                     key=lambda r: r["seed"])
        if sel:
            techniques[t] = technique_stats(sel, cfg.verdict, cfg.bootstrap)
    summary = {"schema_version": SCHEMA_VERSION, "study": cfg.name, "verdict_thresholds": cfg.verdict.model_dump(),
               "runs": len(runs), "techniques": techniques}
    return json.loads(json.dumps(summary))  # as it reads back from summary.json (tuples become lists)


def summarize(out: Path, cfg, write: bool = True) -> dict:
    """Recompute `summary.json` from the complete runs of results.jsonl (written atomically)."""
    scan = scan_results(Path(out) / RESULTS)
    scan.check()
    summary = compute_summary(scan.runs, cfg)
    if write:
        path = Path(out) / "summary.json"
        tmp = path.with_name(f".summary.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
    return summary
