"""What the study step's remaining overheads are worth: variants of one training step, timed
against the step as study runs take it, in alternating blocks in one process.

    python benchmarks/step_variants.py [--blocks 6] [--steps 20] [--variants ...]

The step: the study recipe (configs/recipes/study.yaml: packed, batch 64) on the default
organism, one thread, freed memory kept (`doublebind.heap`), as a study worker runs it. Each
variant is its own `Distiller` on that recipe; every block runs `--steps` steps of each, in
turn, so a machine's drift falls on all alike. Variants:

- `as_run`: the step as it is (the baseline of every ratio);
- `mask`: the packed rows' block-causal attention mask built here from the position ids
  (what transformers' `create_causal_mask` builds, one `torch` expression) and passed in,
  instead of transformers working it out each forward;
- `mode`: the model left in training mode, where the step switches it to training and back
  to evaluation every step (`nn.Module.train` walks every module);
- `mask_mode`: both. These three are bit-identical to `as_run` (checked first: 5 steps of
  fresh students, weights compared);
- `ftz`: denormal floats flushed to zero (`torch.set_flush_denormal`; not bit-identical if
  any occur);
- `split2`, `split4`: the batch of 64 as 2 x 32 or 4 x 16 accumulated micro-batches (smaller
  working sets; sums in another order);
- `eager_attention`: transformers' eager attention (matrix products and a softmax) in place of
  the fused SDPA kernel (another summation order).

cProfile puts the train/eval switches, the mask and the packing at several percent of the
step; a profiler's cost per Python call inflates such Python-heavy parts, which is what this
measures without one. Prints the median milliseconds a step and the ratio to `as_run`. Run it
alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "recipes" / "study.yaml"
VARIANTS = ("as_run", "mask", "mode", "mask_mode", "ftz", "split2", "split4", "eager_attention")
IDENTICAL = ("mask", "mode", "mask_mode")


def block_causal_mask(position_ids):
    """[R, 1, W, W] boolean: causal within each run of consecutive positions, as transformers
    reads packed rows (`masking_utils.find_packed_sequence_indices`); None where no row holds
    more than one sequence (transformers then takes the plain causal path)."""
    import torch

    segment = (torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1).cumsum(-1)
    if bool((segment[:, -1] == 0).all()):
        return None
    i = torch.arange(position_ids.shape[1], device=position_ids.device)
    return ((segment[:, :, None] == segment[:, None, :]) & (i[:, None] >= i[None, :]))[:, None]


class Variant:
    """One Distiller and how to enter and leave its variant around a block of steps."""

    def __init__(self, name: str, org: Path):
        from doublebind import config
        from doublebind.training.distill import Distiller

        overrides = {"split2": ["training.batch=32", "training.grad_accum=2"],
                     "split4": ["training.batch=16", "training.grad_accum=4"]}.get(name, [])
        self.name = name
        self.d = Distiller(org, config.load(RECIPE, overrides, expect="recipe"), None, show_progress=False)
        if name == "eager_attention":
            self.d.model.set_attn_implementation("eager")

    def __enter__(self):
        import torch

        from doublebind.training import distill

        self.saved = distill.student_logits
        if "mask" in self.name.split("_"):
            def masked(model, compiled=False, **inputs):
                if "position_ids" in inputs and (m := block_causal_mask(inputs["position_ids"])) is not None:
                    inputs["attention_mask"] = m
                return self.saved(model, compiled, **inputs)
            distill.student_logits = masked
        if "mode" in self.name.split("_"):
            model = self.d.model
            model.train()
            model.train = lambda mode=True: model  # instance attributes shadow the methods
            model.eval = lambda: model
        torch.set_flush_denormal(self.name == "ftz")
        return self

    def __exit__(self, *exc):
        import torch

        from doublebind.training import distill

        distill.student_logits = self.saved
        for attr in ("train", "eval"):
            self.d.model.__dict__.pop(attr, None)
        self.d.model.eval()
        torch.set_flush_denormal(False)

    def steps(self, first: int, n: int) -> float:
        with self:
            t0 = time.perf_counter()
            for s in range(first, first + n):
                self.d.train_step(s)
            return (time.perf_counter() - t0) / n * 1000


def weights(d) -> list:
    return [p.detach().clone() for p in d.model.parameters()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=6, help="rounds of one block per variant")
    ap.add_argument("--steps", type=int, default=20, help="training steps per block")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="variants to time (as_run is always the first)")
    args = ap.parse_args()

    import torch

    from doublebind import config
    from doublebind.heap import keep_freed_memory
    from doublebind.organisms.build import build_organism
    from doublebind.organisms.models import quiet_transformers
    from doublebind.studies.executor import one_thread

    keep_freed_memory()
    quiet_transformers()
    torch.set_num_threads(1)
    org = ROOT / "runs" / "bench" / "organism-default"
    with one_thread():  # as `organism build` and a study build: one hash, one set of weights
        build_organism(config.load(preset="default"), org, show_progress=False)
    names = ["as_run"] + [v for v in args.variants if v != "as_run"]

    reference = Variant("as_run", org)
    reference.steps(0, 5)
    for name in (v for v in names if v in IDENTICAL):
        other = Variant(name, org)
        other.steps(0, 5)
        same = all(torch.equal(a, b) for a, b in zip(weights(reference.d), weights(other.d)))
        print(f"{name}: weights after 5 steps {'bit-identical to' if same else 'DIFFER from'} as_run")

    variants = [Variant(n, org) for n in names]
    for v in variants:
        v.steps(0, 5)  # warm-up
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for b in range(args.blocks):
        for v in variants:
            times[v.name].append(v.steps(5 + b * args.steps, args.steps))
    base = statistics.median(times["as_run"])
    print(f"study recipe on the default organism, {args.blocks} blocks x {args.steps} steps a variant, 1 thread; "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:16s} {med:6.2f} ms a step (blocks {min(ts):.2f}-{max(ts):.2f})  as_run / this {base / med:.3f}x")


if __name__ == "__main__":
    main()
