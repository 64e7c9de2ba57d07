"""Kill -9 a study at random moments; after resuming, `summary.json` must be byte-identical
to that of an uninterrupted run (issue 14).

    python benchmarks/kill_study.py [--kills 20] [--seed 0] [--study configs/studies/quick.yaml]
                                    [--workdir DIR] [--no-report] [study overrides ...]

1. An uninterrupted `doublebind study run` (the reference); its wall time T is noted.
2. `study run` into a fresh folder, SIGKILLed at a random moment, again and again. Each
   moment is drawn uniformly over the time the rest of the study should still take (a
   resume with one run left, timed once, plus T's time per run for each further run not yet
   in results.jsonl), so kills land during start-up and the organism copy, a distillation,
   an append to results.jsonl or the summary write. After each kill
   `doublebind report` runs on the folder (unless --no-report): it must exit 0 or end in one
   `error:` line, and must leave results.jsonl byte for byte as it was.
3. When a run finishes before its kill comes, or after the last kill, the folder is resumed
   to the end and its summary.json compared with the reference; then a fresh folder starts
   if kills remain (a "cycle").

Printed: kills delivered, where they landed, cycles, identical summaries, report checks.
The default overrides keep each distillation short (a few seconds on 2 cores); any given
replace them. The exit status is 1 if any summary differs or any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["recipe_overrides.training.steps=10", "recipe_overrides.training.checkpoint_every=5",
         "recipe_overrides.eval.n_prompts=20", "recipe_overrides.prompts.size=300"]


def study_cmd(study: Path, out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "doublebind", "study", "run", str(study), "--out", str(out), *overrides]


def complete_runs(out: Path) -> int:
    from doublebind.studies.run import scan_results

    try:
        return len(scan_results(out / "results.jsonl").runs)
    except Exception:  # noqa: BLE001 (a benchmark: any unreadable state counts as no progress)
        return 0


def check_report(out: Path, env: dict) -> str | None:
    """Run `doublebind report`; None when it behaved, else what went wrong."""
    results = out / "results.jsonl"
    before = results.read_bytes() if results.exists() else None
    res = subprocess.run([sys.executable, "-m", "doublebind", "report", str(out)], env=env,
                         capture_output=True, text=True)
    after = results.read_bytes() if results.exists() else None
    if before != after:
        return "report changed results.jsonl"
    if "Traceback" in res.stderr:
        return "report printed a traceback"
    if res.returncode not in (0, 1):
        return f"report exited {res.returncode}"
    if res.returncode == 1:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        if len(lines) != 1 or not lines[0].startswith("error:"):
            return f"report failed without one error line: {res.stderr.strip()[:200]}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--study", type=Path, default=ROOT / "configs" / "studies" / "quick.yaml")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the study folders go (default: a temp folder).")
    ap.add_argument("--no-report", action="store_true", help="Skip `doublebind report` after each kill.")
    ap.add_argument("overrides", nargs="*", help=f"Study overrides (default: {' '.join(SHORT)}).")
    args = ap.parse_args()
    overrides = args.overrides or SHORT
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DOUBLEBIND_THREADS", "1")  # the report and the study may overlap on a small machine

    # Warm the caches first (organism build, teacher outputs): timed into the reference, a
    # cold build made every later run look ten times slower than it is, and most kills were
    # drawn after the study had already ended.
    warm = work / "warm-up"
    shutil.rmtree(warm, ignore_errors=True)
    res = subprocess.run(study_cmd(args.study, warm, overrides), env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"the warm-up run failed: {res.stderr.strip()[-400:]}")
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    t = time.perf_counter()
    res = subprocess.run(study_cmd(args.study, ref, overrides), env=env, capture_output=True, text=True)
    total_s = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(f"the reference run failed: {res.stderr.strip()[-400:]}")
    reference = (ref / "summary.json").read_bytes()
    n_runs = json.loads(reference)["runs"]
    # A resume with one run left (the reference minus its last run's rows) gives the cost of
    # a start plus one run; with the reference's time, what k runs left should take.
    one = work / "one-left"
    shutil.rmtree(one, ignore_errors=True)
    shutil.copytree(ref, one)
    lines = (one / "results.jsonl").read_bytes().splitlines(keepends=True)
    (one / "results.jsonl").write_bytes(b"".join(lines[: len(lines) - json.loads(lines[-1])["run_rows"]]))
    t = time.perf_counter()
    subprocess.run(study_cmd(args.study, one, overrides), env=env, capture_output=True, check=True)
    last_s = min(time.perf_counter() - t, total_s)
    per_run_s = (total_s - last_s) / max(1, n_runs - 1)
    print(f"reference: {n_runs} runs in {total_s:.1f} s; a resume with one run left takes {last_s:.1f} s ({work})")

    kills, landed_after_end, cycles, identical, problems = 0, 0, 0, 0, []
    phases: dict[str, int] = {}
    while kills < args.kills:
        cycles += 1
        out = work / f"killed-{cycles}"
        shutil.rmtree(out, ignore_errors=True)
        while kills < args.kills:
            done = complete_runs(out)
            left = last_s + per_run_s * max(0, n_runs - done - 1)
            moment = rng.uniform(0.0, left)
            proc = subprocess.Popen(study_cmd(args.study, out, overrides), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                proc.wait(timeout=moment)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            if finished:
                err = proc.stderr.read()
                if proc.returncode:
                    problems.append(f"cycle {cycles}: a resume failed: {err.strip()[-300:]}")
                landed_after_end += 1
                break  # this folder is complete: compare it, then start a fresh one
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            kills += 1
            after = complete_runs(out)
            phase = ("before the first run completed" if after == 0 else
                     "after the last run completed" if after == n_runs else "between runs")
            phases[phase] = phases.get(phase, 0) + 1
            print(f"  kill {kills:2d} at {moment:5.1f} s (cycle {cycles}): {after}/{n_runs} runs complete")
            if not args.no_report and after > 0:
                why = check_report(out, env)
                if why:
                    problems.append(f"kill {kills}: {why}")
        res = subprocess.run(study_cmd(args.study, out, overrides), env=env, capture_output=True, text=True)
        if res.returncode:
            problems.append(f"cycle {cycles}: the final resume failed: {res.stderr.strip()[-300:]}")
            continue
        same = (out / "summary.json").read_bytes() == reference
        identical += same
        print(f"cycle {cycles}: summary.json {'identical to' if same else 'DIFFERS from'} the reference")
        if not same:
            problems.append(f"cycle {cycles}: summary.json differs ({out / 'summary.json'})")
    where = ", ".join(f"{n} {p}" for p, n in sorted(phases.items()))
    print(f"{kills} kills ({where}); {landed_after_end} runs finished before their kill; "
          f"{identical}/{cycles} resumed summaries identical to the uninterrupted run"
          + ("" if args.no_report else "; report checked after every kill with rows"))
    for p in problems:
        print(f"PROBLEM: {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
