"""The prepared GPU check: is the code right on CUDA? One script of a few minutes, run as it is
when a session has a GPU, its numbers put in the note.

    make gpu-wheels                      # here: the wheels a bare CUDA image lacks, into .whl/
    bash benchmarks/gpu_check.sh         # there: installs .whl/ if present, then this script
    python benchmarks/gpu_check.py --allow-cpu --out runs/gpu-check   # the same steps on a CPU

Steps, each timed, each in its own process with a timeout; a step that fails is one line in
the table and the next one runs:

1. `env`: Python, torch, CUDA, the GPU, transformers, peft, accelerate.
2. `build`: the tiny LLM organism (`configs/llm/tiny/organism.yaml`) built on the device
   (its teacher's implant trains there).
3. `losses`: the tiny recipe's first steps with the real distiller, in five processes:
   on the CPU (`CUDA_VISIBLE_DEVICES=` hides the GPU), then on the device in fp32, with
   `training.precision: bf16` and with `training.compile: true`. Each says where the
   student, teacher and base live, its ms a step, and the attention kernels one more step
   ran (torch's profiler). Checked: the device's fp32 losses are the CPU's within 1e-3
   (relative; the same sums in another order), bf16's within 5e-2 and not equal (autocast
   really ran), compiled's within 1e-3 of eager; a bf16 step takes at most 10x an fp32 one
   (2-3x on a CPU at this size; an H200 once took 80x: `doublebind.cuda`). Also checked:
   base's `_checksum` (the fingerprint that holds a Hugging Face defender model to what a
   stage loaded) is the same on the device as on the CPU.
   The fifth, `bf16_cudnn`, runs bf16 with `TORCH_CUDNN_SDPA_DEPRIORITIZED=0`, so
   cuDNN attention goes first where torch would put it first (`doublebind.cuda`): its ms a
   step against `bf16`'s says what that setting saves, and is not a check.
4. `study`: `doublebind study run configs/llm/tiny/study.yaml` on the device and, for the
   table to compare, on the CPU; the verdicts of both and the time of each.
5. `throughput`: `benchmarks/throughput.py --quick --skip-before` if the time left allows
   (the embedded world trains on the CPU even on a GPU machine: this measures that
   machine's cores).

Writes `<out>/gpu_check.json` (every step's result) and prints a table. Exit 0 when every
check that ran passed, 1 otherwise, 2 when there is no GPU and `--allow-cpu` was not given.
Scratch (organism, runs, caches) goes to `--work` (default: a temporary folder), so that
only the results land in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# doublebind.cuda.ATTENTION_ENV, spelled out: on a bare CUDA image this process cannot import doublebind (tested equal)
ATTENTION_ENV = "TORCH_CUDNN_SDPA_DEPRIORITIZED"
TINY = ROOT / "configs/llm/tiny"
STEPS = 6  # distiller steps per `losses` process
# The `losses` processes: name -> (overrides, on the CPU only, extra environment)
LOSS_RUNS = {"cpu": ([], True, None), "fp32": ([], False, None), "bf16": (["training.precision=bf16"], False, None),
             "compiled": (["training.compile=true"], False, None),
             "bf16_cudnn": (["training.precision=bf16"], False, {ATTENTION_ENV: "0"})}


def _env(cpu_only: bool = False, extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(cmd: list[str], timeout: float, cpu_only: bool = False, cache: Path | None = None,
         full: dict | None = None, extra_env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, the output's last lines, seconds) of a subprocess; a timeout is code 124.
    `full`, if given, gets the whole stdout (a step's result line is read from it, not from
    the tail, which stderr's warnings can fill)."""
    env = _env(cpu_only, extra_env)
    if cache is not None:
        env["DOUBLEBIND_CACHE"] = str(cache)
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, text, stdout = p.returncode, p.stdout + p.stderr, p.stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        code, text, stdout = 124, f"timed out after {timeout:.0f} s\n" + out, out
    if full is not None:
        full["stdout"] = stdout
    return code, "\n".join(text.strip().splitlines()[-15:]), time.perf_counter() - t


def step_env() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
    for name in ("transformers", "peft", "accelerate", "pydantic", "vllm", "trl"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:
            out[name] = None
    return out


def losses_main(organism: Path, overrides: list[str]) -> None:
    """In its own process: the tiny recipe's first STEPS steps; one JSON line on stdout."""
    import torch

    from doublebind import config
    from doublebind.organisms.models import quiet_transformers
    from doublebind.training.distill import Distiller, _checksum

    quiet_transformers()
    recipe = config.load(TINY / "recipe.yaml", [f"training.steps={STEPS}", *overrides], expect="recipe")
    d = Distiller(organism, recipe, None, show_progress=False)
    where = {"student": str(next(d.model.parameters()).device), "teacher": str(next(d.teacher.parameters()).device),
             "base": str(next(d.domain.load_model("base").parameters()).device)}
    losses, times = [], []
    for s in range(STEPS):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses.append(d.train_step(s))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    later = times[2:] or times
    print(json.dumps({"where": where, "losses": losses, "first_step_s": round(times[0], 3),
                      "ms_per_step": round(1000 * sum(later) / len(later), 2),
                      "attention": attention_kernels(lambda: d.train_step(STEPS)),
                      ATTENTION_ENV: os.environ.get(ATTENTION_ENV),
                      "base_checksum": _checksum(d.domain.load_model("base")),
                      "max_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                      if torch.cuda.is_available() else None}))


def attention_kernels(step) -> list[str]:
    """The attention operators `step()` ran, by torch's profiler: which kernel
    `scaled_dot_product_attention` chose (`_scaled_dot_product_cudnn_attention`,
    `…_efficient_attention`, `…_flash_attention…`), backward included."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        return sorted({e.key for e in prof.key_averages()
                       if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"})
    except Exception as e:  # noqa: BLE001 (the run's losses are its result; this is only a label)
        return [f"not profiled ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"]


def _losses(organism: Path, cache: Path, overrides: list[str], cpu_only: bool, timeout: float,
            extra_env: dict | None = None) -> dict:
    full: dict = {}
    code, text, secs = _run([sys.executable, __file__, "--losses", str(organism), *overrides], timeout,
                            cpu_only=cpu_only, cache=cache, full=full, extra_env=extra_env)
    # The result is stdout's last JSON line, not the output's last line: a warning printed at
    # exit (the compiled run's, on an H200) came after it and failed a run that had passed.
    found = [ln for ln in full["stdout"].splitlines() if ln.startswith("{")]
    if code != 0 or not found:
        return {"ok": False, "error": text or f"exit {code}", "seconds": round(secs, 1)}
    return {"ok": True, **json.loads(found[-1]), "seconds": round(secs, 1)}


def _close(a: list[float], b: list[float]) -> float | None:
    """The largest relative difference of two loss curves, or None when one is missing."""
    if not a or not b:
        return None
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))


def _verdicts(folder: Path) -> dict | None:
    """{"scenario/technique/final|audit_selected": verdict} of a study folder (throughput.py's reader)."""
    from throughput import verdicts  # benchmarks/ is this script's own folder

    p = folder / "summary.json"
    return {"/".join(k): v for k, v in verdicts(p).items()} if p.is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-check")))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--allow-cpu", action="store_true", help="run the steps on a CPU (a dry run of the script)")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    ap.add_argument("--losses", nargs="+", help=argparse.SUPPRESS)  # internal: one `losses` process
    a = ap.parse_args()
    if a.losses:
        losses_main(Path(a.losses[0]), a.losses[1:])
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print("error: no CUDA device (torch.cuda.is_available() is False); --allow-cpu runs the steps on the CPU",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    left = lambda: a.budget - (time.perf_counter() - start)  # noqa: E731
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    cache, organism = work / "cache", work / "organism"
    report: dict = {"device": "cuda" if cuda else "cpu (--allow-cpu)", "steps": {}}
    checks: dict[str, bool] = {}

    def save():
        report["checks"] = checks
        report["seconds"] = round(time.perf_counter() - start, 1)
        (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2))

    report["steps"]["env"] = step_env()
    print(json.dumps(report["steps"]["env"]))
    save()

    code, text, secs = _run([sys.executable, "-m", "doublebind", "organism", "build", "--config",
                             str(TINY / "organism.yaml"), "--out", str(organism)], min(240, left()), cache=cache)
    report["steps"]["build"] = {"ok": code == 0, "seconds": round(secs, 1), **({} if code == 0 else {"error": text})}
    checks["build"] = code == 0
    print(f"build: exit {code} in {secs:.1f} s")
    save()
    if code != 0:
        print(text)
        return 1

    res = {}
    for name, (over, cpu_only, extra_env) in LOSS_RUNS.items():
        res[name] = _losses(organism, cache, over, cpu_only, timeout=max(30.0, min(180, left() - 120)),
                            extra_env=extra_env)
        print(f"losses {name}: {json.dumps(res[name])}")
        report["steps"][f"losses_{name}"] = res[name]
        save()
    dev = "cuda" if cuda else "cpu"
    checks["placement"] = bool(res["fp32"].get("ok")) and all(
        v.startswith(dev) for v in res["fp32"]["where"].values()) and all(
        v.startswith("cpu") for v in res["cpu"].get("where", {"x": "?"}).values())
    fp = res["fp32"].get("losses", [])
    diffs = {"fp32_vs_cpu": _close(fp, res["cpu"].get("losses", [])),
             "bf16_vs_fp32": _close(fp, res["bf16"].get("losses", [])),
             "compiled_vs_fp32": _close(fp, res["compiled"].get("losses", []))}
    report["steps"]["losses_compared"] = diffs
    checks["fp32_equals_cpu"] = diffs["fp32_vs_cpu"] is not None and diffs["fp32_vs_cpu"] < 1e-3
    checks["bf16_close_not_equal"] = diffs["bf16_vs_fp32"] is not None and 0 < diffs["bf16_vs_fp32"] < 5e-2
    checks["compiled_close"] = diffs["compiled_vs_fp32"] is not None and diffs["compiled_vs_fp32"] < 1e-3
    # the checksum that holds a Hugging Face defender model to what a stage loaded, the same where it lies
    checks["checksum_on_device_equals_cpu"] = bool(res["fp32"].get("base_checksum")) and \
        res["fp32"].get("base_checksum") == res["cpu"].get("base_checksum")
    ms = {name: res[name].get("ms_per_step") for name in ("fp32", "bf16", "bf16_cudnn")}
    # 10x: bf16 autocast on a model this small costs 2-3x fp32 on a CPU; the H200 once took 80x
    checks["bf16_step_within_10x_fp32"] = bool(ms["fp32"] and ms["bf16"]) and ms["bf16"] <= 10 * ms["fp32"]
    print(f"ms a step: {json.dumps(ms)}; attention kernels: "
          f"{json.dumps({name: res[name].get('attention') for name in ms})}")
    print(f"losses compared: {json.dumps(diffs)}")
    save()

    for name, cpu_only in (("study", False), ("study_cpu", True)):
        if left() < 90:
            report["steps"][name] = {"ok": False, "error": "skipped: out of time"}
            print(f"{name}: skipped, out of time")
            continue
        folder = work / name
        code, text, secs = _run([sys.executable, "-m", "doublebind", "study", "run", str(TINY / "study.yaml"),
                                 "--out", str(folder)], min(240, left() - 30), cpu_only=cpu_only, cache=cache)
        report["steps"][name] = {"ok": code == 0, "seconds": round(secs, 1), "cells": _verdicts(folder),
                                 **({} if code == 0 else {"error": text})}
        checks[name] = code == 0
        print(f"{name}: exit {code} in {secs:.1f} s\n{text}")
        save()
    cells = [report["steps"][n].get("cells") for n in ("study", "study_cpu")]
    if all(cells):
        report["steps"]["study_verdicts_equal"] = sum(v == cells[1].get(k) for k, v in cells[0].items())
        print(f"study verdicts, device against CPU: {report['steps']['study_verdicts_equal']} of {len(cells[0])} equal")

    if left() > 150:
        code, text, secs = _run([sys.executable, str(ROOT / "benchmarks/throughput.py"), "--quick", "--skip-before"],
                                left() - 20, cache=cache)
        report["steps"]["throughput"] = {"ok": code == 0, "seconds": round(secs, 1), "output": text}
        checks["throughput"] = code == 0
        print(f"throughput: exit {code} in {secs:.1f} s\n{text}")
    else:
        report["steps"]["throughput"] = {"ok": False, "error": "skipped: out of time"}
        print("throughput: skipped, out of time")
    save()
    width = max(len(k) for k in checks)
    print("\n".join(f"{k:<{width}}  {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    print(f"wrote {a.out / 'gpu_check.json'} ({report['seconds']} s)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
