"""Wall time of `make demo` against its 10-minute target on this machine.

    python benchmarks/demo.py            # the default study + report, from an empty cache
    python benchmarks/demo.py --clone    # a fresh `git clone` of HEAD, then `make demo` (venv included)
    python benchmarks/demo.py --clone --keep runs/demo-clone   # and keep the study folder

The first form runs the two commands `make demo` runs, in subprocesses, with an empty
DOUBLEBIND_CACHE and a new output folder, and prints each command's seconds and the ratio
of the total to 600 s. The second also pays for creating the virtual environment, as a
fresh clone does. Run nothing else meanwhile: two torch processes on 2 cores slow each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 600.0
ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t


def main(clone: bool, keep: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DOUBLEBIND_CACHE": str(Path(tmp) / "cache")}
        if clone:
            repo = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
            env.pop("VIRTUAL_ENV", None)
            steps = [("make demo", ["make", "demo"], repo)]
        else:
            exe = Path(sys.executable).parent / "doublebind"
            out = str(Path(tmp) / "demo")
            steps = [("study run", [str(exe), "study", "run", "configs/studies/default.yaml", "--out", out], ROOT),
                     ("report", [str(exe), "report", out], ROOT)]
        total = 0.0
        print(f"{'step':10} {'seconds':>8}")
        for name, cmd, cwd in steps:
            s = timed(cmd, cwd, env)
            total += s
            print(f"{name:10} {s:8.1f}", flush=True)
        print(f"{'total':10} {total:8.1f}  target {TARGET_S:.0f} s  ratio {total / TARGET_S:.2f}")
        if keep:
            import shutil

            shutil.copytree(repo / "runs" / "demo" if clone else Path(out), keep, dirs_exist_ok=True)
            print(f"study folder kept in {keep}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clone", action="store_true", help="time `make demo` in a fresh git clone, venv included")
    ap.add_argument("--keep", metavar="DIR", default=None, help="copy the study folder there afterwards")
    args = ap.parse_args()
    main(args.clone, args.keep)
