"""Study throughput: runs per minute with worker processes against one run at a time, and
the training steps' MFU against a matmul ceiling measured here.

    python benchmarks/throughput.py [--quick] [--workers N] [--seeds 0 1] [--skip-before] [--noise-floor]
                                    [--compile] [--heap] [--techniques baseline verifier_filter ...]
                                    [--whole-study] [--skip-one]

1. Warm-up: the organism is placed, every technique's teacher outputs are cached, and this
   process computes its reference metrics once (a one-step pass of the same grid, here), so
   every timed pass does the same work; workers compute their own references, as they do
   in a real study. The weights memo (`doublebind.memo`) is on in every pass.
2. The grid (default: the default study's techniques x seeds 0, 1, on its first scenario)
   run by `run_study` in this process, each into a fresh folder: as the runner did before
   worker processes and sequence packing (one run at a time with torch's threads on every
   core, padded batches: `training.packing=false`, malloc's own settings), one run at a
   time (`workers=1`, one thread), then with `--workers` (default: the usable cores); from
   the `workers=1` pass on, this process keeps its freed memory as the CLI and every worker
   do (`doublebind.heap`, whatever DOUBLEBIND_HEAP says). `--heap` adds a parallel pass
   before that one whose workers keep malloc's own settings (`DOUBLEBIND_HEAP=system`): the
   ratio is what kept memory alone gives, and the summaries must be byte-identical (the two
   passes run once each, in that order; `benchmarks/heap.py` alternates them step by step). Printed: runs per minute of
   each, the ratios parallel / one-at-a-time and parallel / before, whether the workers=1
   and parallel summary.json files are byte-identical (they must be), and how many verdicts
   the packed runs share with the padded ones (packing changes rounding, so numbers move).
   `--noise-floor` adds a padded pass with every batch split into two accumulated halves,
   the same gradient up to rounding, and how many verdicts that alone changes. `--compile`
   adds a pass with `training.compile: true` (torch.compile of the training forward) on
   the same workers: its runs per minute, its ratio to the others, and how many verdicts
   it shares with the eager parallel pass. Each worker compiles once; the warm-up compiles
   too, so torch's on-disk cache is warm (a first compile on a machine costs about 20 s
   more per worker, once). `--whole-study` times the whole study (every scenario, organism
   seed, technique and seed it lists: the default study's 30 runs) instead of the grid, where
   each worker's one compilation is spread over more runs; `--skip-one` leaves out the
   one-worker pass (and so the identical-summary check) to save its time. Before the timed
   passes, the workers' fork server is started (untimed, its time printed): the passes in
   this process begin with their imports done, and so do the workers forked from it
   (`studies/executor.py`). A pass in another environment starts it again, inside its
   time (`--heap`'s pass on malloc's settings, and the pass after it). `--abba` runs the
   passes again in reverse order (A B C, then C B A) and takes each pass's mean time, so a
   steady drift of the machine's speed cancels out of the ratios (the old runner's own pass
   moved by 20% between runs an hour apart); the second old-runner pass keeps freed memory,
   which the process cannot undo, and that can only favour the old runner.
3. MFU. The ceiling: the FLOP/s of a 2048 x 2048 fp32 matmul, with one thread and with a
   thread per worker. The achieved rate: training steps of the baseline recipe alone (no
   evals, sampling or stages), counted as 6 * N * D (N trainable parameters of the student,
   D the non-padding tokens of the step's sequences), first in one worker, then in every
   worker at once. Printed: GFLOP/s and MFU for one worker (against the one-thread ceiling)
   and for all workers (their summed FLOPs over the wall time, against the all-thread
   ceiling). Then where the rest goes: one worker's steps under torch's profiler, the
   matrix products' share of the operator time and their own rate (FLOPs over their time)
   against the ceiling; MFU cannot exceed that rate times the products' share of the time.

`--quick` runs the quick study (two techniques x two seeds, short runs) and short MFU
measurements: about a minute once the quick organism is cached, a smoke test. Timings mean
little while anything else loads the machine (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PADDED = ["recipe_overrides.training.packing=false"]  # the runner before sequence packing
COMPILED = ["recipe_overrides.training.compile=true"]  # training.compile
QUICK = ["recipe_overrides.training.steps=20", "recipe_overrides.training.checkpoint_every=10",
         "recipe_overrides.eval.n_prompts=20", "recipe_overrides.prompts.size=300"]


def matmul_gflops(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of an n x n fp32 matmul with `threads` torch threads (best of repeated runs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(before)


def verdicts(summary: Path) -> dict:
    """(scenario, technique, delivered|audit-selected) -> verdict, from a study's summary.json."""
    import json

    out = {}
    for scen, block in json.loads(summary.read_text())["scenarios"].items():
        for tech, res in block["techniques"].items():
            for which, r in res.items():
                if isinstance(r, dict) and "verdict" in r:
                    out[(scen, tech, which)] = r["verdict"]
    return out


def verdicts_against(a: Path, b: Path) -> str:
    """How many verdicts the study in `b` shares with the one in `a`, against how many `a`'s
    replication figures expected (`doublebind study compare`), and which moved."""
    from doublebind.studies.compare import compare_folders, sentence

    r = compare_folders(a, b)
    return sentence(r) + "".join(f"; {c.scenario}/{c.technique}/{c.view}: {c.a} -> {c.b}"
                                 for c in r["cells"] if c.shared and not c.same)


def first_scenario_grid(cfg, techniques: list[str], seeds: list[int]) -> list[str]:
    """Overrides narrowing a study to `techniques` x `seeds` on its first scenario at organism
    seed 0 (the default study has two scenarios); a technique the study lists keeps its options."""
    import json

    dumped = cfg.model_dump(mode="json")
    listed = {(t if isinstance(t, str) else t["name"]): t for t in dumped["techniques"]}
    first = dumped.get("scenarios") or []
    return [f"techniques={json.dumps([listed.get(t, t) for t in techniques])}", f"seeds={json.dumps(seeds)}",
            *([f"scenarios={json.dumps(first[:1])}", "organism_seeds=[0]"] if first else [])]


def fresh_out(work: Path, name: str) -> Path:
    """`work/name`, emptied, holding the organisms the warm-up placed (copied, never rebuilt)."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    for org in ("organism", "organisms"):
        if (work / "warm-up" / org).is_dir():
            shutil.copytree(work / "warm-up" / org, out / org)
    return out


def train_flops(organism: str, recipe_path: str, overrides: list[str], steps: int,
                start_at: float) -> tuple[float, float, float]:
    """(training FLOPs by 6*N*D, wall start, wall end) of `steps` steps of one recipe's
    student, timed after a few warm-up steps, from wall time `start_at` on (so that copies in
    several workers overlap)."""
    from doublebind import config
    from doublebind.training.distill import Distiller

    recipe = config.load(Path(recipe_path), overrides, expect="recipe")
    d = Distiller(Path(organism), recipe, None, show_progress=False)
    n_params = sum(p.numel() for p in d.model.parameters() if p.requires_grad)
    tokens = [0]
    draw = d.order.randrange

    def counting(k):  # the step's items are drawn through this RNG; count their real tokens
        i = draw(k)
        tokens[0] += len(d.items[i].example.prompt) + len(d.items[i].example.response)  # no padding
        return i

    for s in range(3):
        d.train_step(s)
    while time.time() < start_at:
        time.sleep(0.01)
    d.order.randrange = counting
    t0 = time.time()
    for s in range(steps):
        d.train_step(3 + s)
    return 6.0 * n_params * tokens[0], t0, time.time()


@contextlib.contextmanager
def quiet_stderr_fd():
    """File descriptor 2 to /dev/null for the block: the profiler's libkineto writes its
    `USDT: … profiler_start` / `profiler_stop` lines there directly, and no setting silences
    them. An exception raised inside is printed after the descriptor is back."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def matmul_share(organism: str, recipe_path: str, overrides: list[str], steps: int) -> tuple[float, float, float]:
    """(matrix-product FLOPs, their operator seconds, all operators' seconds) of `steps`
    training steps under torch's profiler (which slows every operator a little). What bounds
    MFU here: the products' own rate, and the share of the step the other operators take."""
    from torch.profiler import ProfilerActivity, profile

    from doublebind import config
    from doublebind.training.distill import Distiller

    d = Distiller(Path(organism), config.load(Path(recipe_path), overrides, expect="recipe"), None,
                  show_progress=False)
    for s in range(3):
        d.train_step(s)
    with quiet_stderr_fd(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for s in range(steps):
            d.train_step(3 + s)
    ops = prof.key_averages()
    mm = [k for k in ops if k.key in ("aten::mm", "aten::addmm", "aten::bmm")]
    return (float(sum(k.flops for k in mm)), sum(k.self_cpu_time_total for k in mm) / 1e6,
            sum(k.self_cpu_time_total for k in ops) / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick study, short runs: a smoke test")
    ap.add_argument("--workers", type=int, default=None, help="parallel workers (default: usable cores)")
    ap.add_argument("--techniques", nargs="+", default=None,
                    help="techniques of the grid, by name (default: the study's own list)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--mfu-steps", type=int, default=None, help="timed training steps per worker (default 100; quick 20)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also run the grid padded with each batch split in two accumulated halves (the same "
                         "gradient up to rounding) and print how many verdicts that changes: the yardstick for "
                         "the packed-against-padded count")
    ap.add_argument("--compile", action="store_true",
                    help="also run the parallel pass with training.compile: true (torch.compile) and compare")
    ap.add_argument("--heap", action="store_true",
                    help="add a parallel pass whose workers keep malloc's own settings (DOUBLEBIND_HEAP=system)")
    ap.add_argument("--skip-before", action="store_true",
                    help="leave out the every-core pass (it crawls when other processes hold the cores)")
    ap.add_argument("--whole-study", action="store_true",
                    help="time the whole study (every scenario, organism seed, technique and seed), not the grid")
    ap.add_argument("--skip-one", action="store_true",
                    help="leave out the one-worker pass (and the identical-summary check)")
    ap.add_argument("--abba", action="store_true",
                    help="run the passes, then again in reverse order, and take each pass's mean: "
                         "a drift of the machine's speed over the benchmark then cancels out of the ratios")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.whole_study and (args.techniques or args.seeds != [0, 1]):
        ap.error("--whole-study runs the study's own techniques and seeds: leave out --techniques and --seeds")

    from doublebind import config
    from doublebind.organisms.models import quiet_transformers
    from doublebind.heap import ENV as heap_env
    from doublebind.heap import keep_freed_memory
    from doublebind.studies.executor import run_jobs, workers_for
    from doublebind.studies.run import run_study
    from doublebind.threads import cpu_count

    quiet_transformers()
    workers = workers_for(args.workers)
    study = ROOT / "configs" / "studies" / ("quick.yaml" if args.quick else "default.yaml")
    cfg = config.load(study, expect="study")
    techniques = args.techniques or (list(cfg.technique_stages())[:2] if args.quick else list(cfg.technique_stages()))
    if args.whole_study:
        techniques = list(cfg.technique_stages())
        over = [*(QUICK if args.quick else [])]
        names = [sc.name for sc in cfg.scenarios] if cfg.scenarios else [None]
        builds = sum(len(cfg.organism_seeds_of(sc) or [0]) for sc in names)  # None: the one organism's
        runs = builds * len(techniques) * len(cfg.seeds)
        grid = (f"the whole study: {len(names)} scenarios, {builds} organism builds in all x {len(techniques)} "
                f"techniques x seeds {list(cfg.seeds)}")
    else:
        over = [*first_scenario_grid(cfg, techniques, args.seeds), *(QUICK if args.quick else [])]
        runs = len(techniques) * len(args.seeds)
        grid = f"{len(techniques)} techniques x seeds {args.seeds}"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="doublebind-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f}; {cpu_count()} usable cores; {workers} workers; "
          f"{study.name}: {grid} = {runs} runs")
    print(f"techniques: {', '.join(techniques)}")

    t0 = time.perf_counter()
    shutil.rmtree(work / "warm-up", ignore_errors=True)
    run_study(study, work / "warm-up", show_progress=False, workers=1,
              overrides=[*(o for o in over if not o.startswith(("recipe_overrides.training.", "recipe_overrides.eval."))),
                         "recipe_overrides.training.steps=1", "recipe_overrides.training.checkpoint_every=1",
                         "recipe_overrides.eval.n_prompts=5",
                         *(COMPILED if args.compile else [])])
    print(f"warm-up (organism, teacher outputs): {time.perf_counter() - t0:.1f} s")

    import contextlib

    import torch

    from doublebind.studies import executor

    if workers > 1 and executor.start_method() == "forkserver":
        # Untimed, as the passes in this process start with their imports done: the fork server
        # the workers come from, started with the environment the worker passes run in.
        saved_heap = os.environ.get(heap_env)
        os.environ[heap_env] = "keep"
        t0 = time.perf_counter()
        run_jobs(os.getpid, {w: () for w in range(workers)}, workers, lambda key, pid: None)
        print(f"workers' fork server started (imports; untimed): {time.perf_counter() - t0:.1f} s")
        if saved_heap is None:
            os.environ.pop(heap_env, None)
        else:
            os.environ[heap_env] = saved_heap

    wall: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    passes = ([("before", 1)] * (not args.skip_before) + [("system-heap", workers)] * args.heap
              + [("w1", 1)] * (not args.skip_one) + [(f"w{workers}", workers)] * (workers > 1 or args.skip_one)
              + [("compiled", workers)] * args.compile)
    if args.abba:  # the same passes again, in reverse order, into folders of their own
        passes += [(f"{name}-b", n) for name, n in reversed(passes)]
    for name, n in passes:
        out = fresh_out(work, name)
        kind, name = name, name.removesuffix("-b")  # `name` says what the pass does, `kind` where it goes
        if name not in ("before", "system-heap"):  # from here on this process keeps its freed memory, as the CLI does
            keep_freed_memory({heap_env: "keep"})
        saved_heap = os.environ.get(heap_env)
        if name != "before":  # workers as the CLI runs them, or on malloc's own settings (--heap)
            os.environ[heap_env] = "system" if name == "system-heap" else "keep"
        one_thread, threads = executor.one_thread, torch.get_num_threads()
        if name == "before":  # the runner before worker processes: one run at a time on every core
            executor.one_thread, _ = contextlib.nullcontext, torch.set_num_threads(cpu_count())
        t0 = time.perf_counter()
        try:
            run_study(study, out, show_progress=False, workers=n,
                      overrides=[*over, *(PADDED if name == "before" else COMPILED if name == "compiled" else [])])
        finally:
            executor.one_thread, _ = one_thread, torch.set_num_threads(threads)
            if saved_heap is None:
                os.environ.pop(heap_env, None)
            else:
                os.environ[heap_env] = saved_heap
        times.setdefault(name, []).append(time.perf_counter() - t0)
        wall[name] = sum(times[name]) / len(times[name])  # with --abba, the mean of the two
        what = (f"one run at a time, {cpu_count()} threads (the runner before --workers)" if name == "before"
                else f"workers={n}, one thread each, training.compile" if name == "compiled"
                else f"workers={n}, one thread each, DOUBLEBIND_HEAP=system" if name == "system-heap"
                else f"workers={n}, one thread each")
        print(f"{what}{' (second time)' if kind != name else ''}: {runs} runs in {times[name][-1]:.1f} s = "
              f"{60 * runs / times[name][-1]:.2f} runs/min")
    if args.abba:
        print("--abba: every ratio below is of the two passes' mean times; each half alone: "
              + "; ".join(f"{name} {t[0]:.1f} and {t[1]:.1f} s" for name, t in times.items())
              + ". The second old-runner pass ran with freed memory kept (this process cannot undo it "
                "once a worker pass has set it), which can only favour the old runner")
        same = all((work / name / "summary.json").read_bytes() == (work / f"{name}-b" / "summary.json").read_bytes()
                   for name in times)
        print(f"--abba: every second pass's summary.json identical to the first's: {'yes' if same else 'NO'}")
    if args.skip_one:
        print("" if args.skip_before else f"throughput ratio workers={workers} / before: "
              f"{wall['before'] / wall[f'w{workers}']:.2f}x (no one-worker pass: --skip-one)")
    else:
        same = (work / "w1" / "summary.json").read_bytes() == (work / f"w{workers}" / "summary.json").read_bytes()
        print(f"throughput ratio workers={workers} / workers=1: {wall['w1'] / wall[f'w{workers}']:.2f}x "
              f"(summary.json identical: {'yes' if same else 'NO'})"
              + ("" if args.skip_before else f"; workers={workers} / before: {wall['before'] / wall[f'w{workers}']:.2f}x")
          + ("; --quick: runs of seconds, so starting the worker processes (imports, loading the organism) "
             "weighs on this ratio more than in a study" if args.quick else ""))
    if not args.skip_before:
        print(f"verdicts, packed against padded (before): {verdicts_against(work / 'before', work / f'w{workers}')}")
    if args.heap:
        same = (work / f"w{workers}" / "summary.json").read_bytes() == (work / "system-heap" / "summary.json").read_bytes()
        print(f"workers={workers}, freed memory kept: {wall['system-heap'] / wall[f'w{workers}']:.2f}x the same workers "
              f"on malloc's own settings (summary.json identical: {'yes' if same else 'NO'})")
    if args.compile:
        print(f"compiled workers={workers}: {wall[f'w{workers}'] / wall['compiled']:.2f}x eager workers={workers}"
              + ("" if args.skip_before else f", {wall['before'] / wall['compiled']:.2f}x before")
              + f"; verdicts, compiled against eager: {verdicts_against(work / f'w{workers}', work / 'compiled')}")
    if args.noise_floor and not args.skip_before:
        # The same gradients up to rounding: padded, each step's batch as two accumulated halves.
        batch = config.load(study.parent / cfg.recipe, expect="recipe").training.batch
        out = fresh_out(work, "padded-split")
        run_study(study, out, show_progress=False, workers=workers,
                  overrides=[*over, *PADDED, f"recipe_overrides.training.batch={batch // 2}",
                             "recipe_overrides.training.grad_accum=2"])
        print(f"noise floor: padded with each batch split in two (the same gradient up to rounding) against "
              f"padded: {verdicts_against(work / 'before', out)}")

    # MFU of the training steps alone
    steps = args.mfu_steps or (20 if args.quick else 100)
    recipe = study.parent / cfg.recipe
    r_over = [f"{k.removeprefix('recipe_overrides.')}" for k in over if k.startswith("recipe_overrides.")]
    one = matmul_gflops(1)
    full = matmul_gflops(workers)
    placed = sorted((work / f"w{workers}").glob("organism*/**/organism.json"), key=lambda p: ("/default-o0/" not in str(p), str(p)))
    organism = str(placed[0].parent)  # the first scenario's (the whole study places every scenario's)
    res: dict = {}
    run_jobs(train_flops, {0: (organism, str(recipe), r_over, steps, 0.0)}, 1, res.__setitem__)
    flops, t_start, t_end = res[0]
    g1 = flops / (t_end - t_start) / 1e9
    print(f"matmul ceiling (2048^2 fp32): {one:.1f} GFLOP/s with 1 thread, {full:.1f} GFLOP/s with {workers}")
    print(f"training, 1 worker:  {g1:.1f} GFLOP/s (6*N*D over {steps} steps), MFU {g1 / one:.0%} of 1 thread")
    res.clear()
    run_jobs(matmul_share, {0: (organism, str(recipe), r_over, min(steps, 20))}, 1, res.__setitem__)
    mm_flops, mm_s, all_s = res[0]
    mm_rate = mm_flops / mm_s / 1e9
    print(f"in the step (profiled, 1 worker): matrix products {mm_s / all_s:.0%} of the operator time, at "
          f"{mm_rate:.1f} GFLOP/s ({mm_rate / one:.0%} of the ceiling): the other operators hold MFU down")
    if args.compile:
        res.clear()
        run_jobs(train_flops, {0: (organism, str(recipe), [*r_over, "training.compile=true"], steps, 0.0)}, 1,
                 res.__setitem__)
        fc, s0, s1 = res[0]
        gc = fc / (s1 - s0) / 1e9
        print(f"training, 1 worker, training.compile: {gc:.1f} GFLOP/s, MFU {gc / one:.0%} of 1 thread "
              f"({gc / g1:.2f}x eager)")
    if workers > 1:
        res.clear()
        start = time.time() + 20  # every worker has started and warmed up by then (they wait for it)
        t0 = time.perf_counter()
        run_jobs(train_flops, {w: (organism, str(recipe), r_over, steps, start) for w in range(workers)},
                 workers, res.__setitem__)
        total = sum(f for f, _, _ in res.values())
        span = max(e for _, _, e in res.values()) - min(s for _, s, _ in res.values())
        gall = total / span / 1e9
        print(f"training, {workers} workers: {gall:.1f} GFLOP/s together, MFU {gall / full:.0%} of {workers} "
              f"threads ({gall / g1:.2f}x one worker; phase {time.perf_counter() - t0:.0f} s)")
    print(f"load average {os.getloadavg()[0]:.2f}; work folder {work}")


if __name__ == "__main__":
    main()
