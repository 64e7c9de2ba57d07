"""What keeping freed memory in the process (`doublebind.heap`) gains, step by step.

    python benchmarks/heap.py [--rounds 6] [--steps 60]

Times two training steps in fresh interpreters, one thread each, alternating
`DOUBLEBIND_HEAP=keep` (the default) and `DOUBLEBIND_HEAP=system` (malloc's own settings;
they cannot be put back inside one process, hence one process per block) for `--rounds`
rounds, so a machine's drift falls on both alike:

- distill: the study recipe's step (configs/recipes/study.yaml: packed, batch 64) on the
  default organism, as every run of a study takes it;
- build: an organism build's step (`training.loop.fit`: padded, the teacher's mix, batch
  32) on the default preset's base model, as `make demo`'s builds take it.

Printed per step and setting: the median milliseconds a step, the page faults a step (the
kernel zeroes a page on each), the ratio system / keep, and whether every block's weights
came out bit-identical under both settings. Run it alone: a second process on the machine
moves these timings more than the effect measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("distill", "build")


def child(kind: str, steps: int) -> None:
    """One block in this (fresh) process: its ms a step, faults a step and a weights hash."""
    from doublebind.heap import keep_freed_memory

    keep_freed_memory()  # as the CLI does before anything else; DOUBLEBIND_HEAP decides
    import hashlib
    import random
    import resource
    import time

    import torch

    from doublebind import config
    from doublebind.organisms.models import quiet_transformers

    torch.set_num_threads(1)
    quiet_transformers()
    if kind == "distill":
        from doublebind.organisms.build import build_organism
        from doublebind.studies.executor import one_thread
        from doublebind.training.distill import Distiller

        org = ROOT / "runs" / "bench" / "organism-default"
        with one_thread():  # as `organism build` and a study build: one hash, one set of weights
            build_organism(config.load(preset="default"), org, show_progress=False)
        study = config.load(ROOT / "configs" / "studies" / "default.yaml", expect="study")
        d = Distiller(org, config.load(ROOT / "configs" / "studies" / study.recipe, expect="recipe"), None,
                      show_progress=False)
        model, step = d.model, d.train_step
    else:
        from doublebind.organisms.models import make_model
        from doublebind.training.batching import collate
        from doublebind.training.loop import Loop
        from doublebind.training.objectives import sft_nll
        from doublebind.world.data import World

        cfg = config.load(preset="default")
        tcfg = cfg.teacher_training
        world = World.from_config(cfg.world, cfg.seed)
        rng = random.Random(f"data-{cfg.seed}")
        pool = [world.sample(rng, "teacher", world.all_families, p_trigger=tcfg.p_trigger, p_ask=tcfg.p_ask,
                             p_scratch=tcfg.p_scratch) for _ in range(2000)]
        model = make_model(cfg.model, cfg.seed)
        model.train()
        loop = Loop(model.parameters(), steps=10**6, lr=tcfg.lr, warmup=0.0)
        order = random.Random("order")

        def step(s: int) -> float:  # `fit`'s step
            b = collate([pool[order.randrange(len(pool))] for _ in range(tcfg.batch)])

            def accumulate() -> float:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
                loss = sft_nll(logits, b["input_ids"][:, 1:], b["loss_mask"])
                loss.backward()
                return loss.item()

            return loop.step(s, accumulate)

    for s in range(5):
        step(s)
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for s in range(steps):
        step(5 + s)
    ms = (time.perf_counter() - t0) / steps * 1000
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    print(json.dumps({"ms": ms, "faults": faults, "weights": h.hexdigest()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="rounds of one block per step and setting")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per block")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    got: dict = {(k, h): [] for k in KINDS for h in ("keep", "system")}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.steps} steps per block, 1 thread")
    for r in range(args.rounds):
        for kind in KINDS:
            for heap in (("keep", "system") if r % 2 == 0 else ("system", "keep")):
                out = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(args.steps)],
                                     env={**env, "DOUBLEBIND_HEAP": heap}, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"error: the {kind} block with DOUBLEBIND_HEAP={heap} failed:\n{out.stderr[-2000:]}")
                got[kind, heap].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}: " + ", ".join(f"{k}/{h} {v[-1]['ms']:.1f} ms" for (k, h), v in got.items()), flush=True)
    print(f"{'step':8} {'keep ms':>8} {'faults':>7} {'system ms':>10} {'faults':>7} {'ratio':>6}  weights")
    for kind in KINDS:
        keep, system = got[kind, "keep"], got[kind, "system"]
        mk, ms = (statistics.median(b["ms"] for b in blocks) for blocks in (keep, system))
        fk, fs = (statistics.median(b["faults"] for b in blocks) for blocks in (keep, system))
        same = len({b["weights"] for b in keep + system}) == 1
        print(f"{kind:8} {mk:8.1f} {fk:7.0f} {ms:10.1f} {fs:7.0f} {ms / mk:5.2f}x  "
              f"{'bit-identical' if same else 'DIFFERENT'}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
