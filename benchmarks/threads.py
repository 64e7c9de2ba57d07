"""Thread policy: two distillations side by side, with torch's default threads and with one
thread each (DOUBLEBIND_THREADS=1), against one alone.

    python benchmarks/threads.py [--preset quick] [--steps 40] [--pairs 1]

Each distillation is a separate `doublebind distill` process (a short hard-label run on the
organism; the teacher outputs are cached first by a warm-up run, so every timed run does the
same work). Printed: the wall time of each setting and the ratio default / one-thread for
the side-by-side pair. Run it on an otherwise quiet machine: other load changes the answer
(the script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "hard_sft.yaml"


def distill_cmd(org: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "doublebind", "distill", "--organism", str(org), "--recipe", str(RECIPE),
            "--out", str(out), "--force", f"training.steps={steps}", f"training.checkpoint_every={steps}",
            "eval.n_prompts=20", "prompts.size=500", "training.save_weights=false"]


def env_for(threads: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DOUBLEBIND_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:
        env["DOUBLEBIND_THREADS"] = threads
    return env


def timed(cmds: list[list[str]], env: dict) -> float:
    """Wall time until every process of `cmds`, started together, has finished."""
    t = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"a distillation failed: {err.strip().splitlines()[-1:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=1, help="Repeat each setting this many times (best is kept).")
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers
    from doublebind.threads import cpu_count

    quiet_transformers()
    org = Path("runs/bench") / f"organism-{args.preset}"
    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
        build_organism(config.load(preset=args.preset), org, show_progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="doublebind-threads-"))
    one = lambda i: distill_cmd(org, tmp / f"run{i}", args.steps)  # noqa: E731
    print(f"{cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before; {args.steps} steps per distillation")
    timed([one(0)], env_for(None))  # warm-up: teacher outputs cached, files in the page cache

    settings = {
        "one process, default threads": ([one(0)], env_for(None)),
        "two side by side, default threads": ([one(0), one(1)], env_for(None)),
        "two side by side, DOUBLEBIND_THREADS=1": ([one(0), one(1)], env_for("1")),
        "one process, DOUBLEBIND_THREADS=1": ([one(0)], env_for("1")),
    }
    results = {}
    for name, (cmds, env) in settings.items():
        results[name] = min(timed(cmds, env) for _ in range(args.pairs))
        print(f"  {name:42s} {results[name]:7.1f} s")
    ratio = results["two side by side, default threads"] / results["two side by side, DOUBLEBIND_THREADS=1"]
    print(f"side by side: default threads take {ratio:.2f}x the time of one thread each "
          f"(load average {os.getloadavg()[0]:.2f} after)")


if __name__ == "__main__":
    main()
