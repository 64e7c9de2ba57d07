"""doublebind against TRL on the same single-run training jobs: tokens/s and final losses.

    pip install -e '.[bench]'                      # TRL (and datasets)
    python benchmarks/vs_trl.py                    # 200 steps per job, quick organism
    python benchmarks/vs_trl.py --quick            # 20 steps: a smoke check of the comparison
    python benchmarks/vs_trl.py --steps 500 --preset default
    python benchmarks/vs_trl.py --trl-checkpointing     # TRL with its default gradient checkpointing
    python benchmarks/vs_trl.py --padding-free          # TRL's SFTTrainer padding-free too
    python benchmarks/vs_trl.py --padded                # doublebind without sequence packing
    python benchmarks/vs_trl.py --compile               # both compiled: training.compile, TRL torch_compile
    python benchmarks/vs_trl.py --abba                  # each side timed twice: doublebind, TRL, TRL, doublebind

Two jobs, each run once by doublebind and once by TRL, with the same student weights at
step 0, the same examples in the same order (the items doublebind's seeded sampler draws,
fed to TRL through a sequential sampler), the same batch, the same optimiser (doublebind's
fused AdamW, betas 0.9/0.98, no weight decay, passed to TRL), gradient clipping at 1, and
doublebind's learning-rate schedule (given to TRL as a LambdaLR), fp32 on CPU:

doublebind packs each batch's sequences into shared rows (`training.packing`, its default;
`--padded` turns it off). TRL pads, as its trainers do by default; `--padding-free` gives
TRL's SFTTrainer batches in its own padding-free layout (the whole batch in one row,
positions restarting at each sequence), which GKDTrainer has no mode for.

- sft: hard-label SFT on teacher samples, loss on completion tokens (TRL `SFTTrainer`,
  gradient checkpointing OFF unless --trl-checkpointing: TRL turns it on by default, which
  re-runs the forward in the backward (1.8x slower here); bf16 off);
- soft-label: generalised JSD at beta 0.5, T 1 on the teacher's full distribution (TRL's
  `GKDTrainer`, now `trl.experimental.gkd`, with lmbda 0 and seq_kd off, i.e. off-policy
  KD on the given samples). TRL runs the teacher forward on every batch; doublebind reads
  the teacher's log-probs from its teacher-output cache, which is how doublebind runs this
  job (`sampling.soft_labels: full`). The cache is filled before timing.

tokens/s counts the non-padding tokens (prompt + response) of the batches, over the steps
after the first (warm-up excluded; the first 10 with --compile), measured the same way for both, by wall time and by the
process's CPU time (one thread: less moved by other jobs on a shared machine). "|Δloss| step 1" compares
the first step's losses: the same loss function on the same weights and data, so float noise
at most. After that the two runs part: these tiny runs are chaotic (gradients clipped at
most steps, AdamW's per-weight normalisation), so a rounding-level difference grows to
percent-level losses within tens of steps. The table shows it with a control: doublebind
rerun from its initial weights times (1 + 1e-7 noise). Equal losses here means step 1 equal
and TRL agreeing with doublebind for about as many steps as the control does; the final
losses of all three are then draws of the same run, not one number.
Timings on a shared machine are noisy: run it alone for numbers you quote.

`--compile` compiles both sides: doublebind with `training.compile: true`, TRL through the
Trainer's own `torch_compile=True` (torch.compile of the model, default settings). The first
10 steps of each are then left out of the timing (`--warmup`), so compilation and TRL's
recompilations for the first padded shapes it meets are not counted; later recompilations
are.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "hard_sft.yaml"
JOBS = {
    "sft": ["objective.kind=sft", "sampling.soft_labels=none"],
    "soft-label": ["objective.kind=jsd", "objective.beta=0.5", "objective.temperature=1.0",
                   "sampling.soft_labels=full"],
}


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds: CPU time is what one thread used, less moved by other jobs."""
    return time.perf_counter(), time.process_time()


def _doublebind_run(d, steps: int, warm: int = 1) -> tuple[list[float], tuple[float, float]]:
    """Train the Distiller `d` for `steps` steps; (losses, (wall, CPU) seconds of steps warm+1..N)."""
    losses, t0 = [], None
    for s in range(steps):
        losses.append(d.train_step(s))
        if s == warm - 1:
            t0 = _clock()
    t1 = _clock()
    return losses, (t1[0] - t0[0], t1[1] - t0[1])


def _tokenizer(d):
    """The organism's tokenizer (HF organisms), or the embedded world's saved as an HF folder."""
    if getattr(d.domain, "tokenizer", None) is not None:
        return d.domain.tokenizer
    from transformers import AutoTokenizer

    from doublebind.world import vocab

    folder = Path(tempfile.mkdtemp(prefix="vs_trl_tok_"))
    vocab.save_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder))


def _trl_run(job: str, student, teacher, items, batch: int, steps: int, recipe, tokenizer, pad_id: int,
             out: Path, checkpointing: bool = False, padding_free: bool = False, compile: bool = False,
             warm: int = 1) -> tuple[list[float], float]:
    """The same job with TRL's trainer; (per-step losses, seconds of steps warm+1..N)."""
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import PrinterCallback, TrainerCallback

    from doublebind.training.batching import _ids, collate
    from doublebind.training.loop import Loop, lr_at

    tr = recipe.training

    def collator(rows):
        if padding_free:  # TRL's padding-free layout: the batch's sequences in one row, positions restarting
            seqs = [_ids(items[r["idx"]].example.prompt + items[r["idx"]].example.response) for r in rows]
            labels = []
            for r, sq in zip(rows, seqs):
                n = len(items[r["idx"]].example.prompt)
                labels += [-100] * n + sq[n:]  # completion tokens only; a sequence's first token never a target
            return {"input_ids": torch.tensor([sum(seqs, [])]), "labels": torch.tensor([labels]),
                    "position_ids": torch.tensor([[t for sq in seqs for t in range(len(sq))]])}
        b = collate([items[r["idx"]].example for r in rows], pad_id=pad_id)
        labels = b["input_ids"].clone()
        labels[:, 0] = -100  # never a target
        labels[:, 1:][b["loss_mask"] == 0] = -100  # completion tokens only, as doublebind's loss_mask
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": labels}

    marks: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(_clock())

    # Logged once at the end: per-step losses are read from `training_step` (a float, as doublebind's
    # step returns), so TRL pays no per-step logging or printing.
    common = dict(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps,
                  learning_rate=tr.lr, max_grad_norm=1.0, logging_steps=steps, save_strategy="no", report_to="none",
                  log_level="error",
                  use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=checkpointing, seed=recipe.seed,
                  dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
                  dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, torch_compile=compile)
    # doublebind's own optimiser (AdamW, betas 0.9/0.98, no weight decay, the fused kernel)
    opt = Loop(student.parameters(), steps=steps, lr=tr.lr, warmup=tr.warmup, fused=True).opt
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, tr.lr, tr.warmup) / tr.lr)
    data = Dataset.from_dict({"idx": list(range(len(items)))})
    kw = dict(model=student, train_dataset=data, data_collator=collator, processing_class=tokenizer,
              optimizers=(opt, sched), callbacks=[Clock()])
    if job == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer_cls, args = SFTTrainer, SFTConfig(**common)
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        trainer_cls = GKDTrainer
        args = GKDConfig(**common, lmbda=0.0, seq_kd=False, beta=recipe.objective.beta,
                         temperature=recipe.objective.temperature)
        kw["teacher_model"] = teacher

    class InOrder(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def training_step(self, *a, **k):
            loss = super().training_step(*a, **k)
            losses.append(loss.item())
            return loss

    trainer = InOrder(args=args, **kw)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return losses, (marks[-1][0] - marks[warm - 1][0], marks[-1][1] - marks[warm - 1][1])


def _job(org: Path, job: str, steps: int, prompts: int, checkpointing: bool = False, padded: bool = False,
         padding_free: bool = False, compile: bool = False, warm: int = 1, abba: bool = False) -> dict:
    import torch

    from doublebind import config
    from doublebind.training.distill import Distiller

    recipe = config.load(RECIPE, [*JOBS[job], f"training.steps={steps}", f"prompts.size={prompts}",
                                  "training.save_weights=false", f"name=vs_trl_{job}",
                                  *(["training.packing=false"] if padded else []),
                                  *(["training.compile=true"] if compile else [])], expect="recipe")
    d = Distiller(org, recipe, None, show_progress=False)
    batch = recipe.training.batch
    init = copy.deepcopy(d.accelerator.unwrap_model(d.model))
    replay = random.Random()
    replay.setstate(d.order.getstate())
    items = [d.items[replay.randrange(len(d.items))] for _ in range(steps * batch)]  # what doublebind will draw
    tokens = sum(len(it.example.prompt) + len(it.example.response) for it in items[warm * batch:])
    teacher = d.teacher if job != "sft" else None

    db_losses, db_s = _doublebind_run(d, steps, warm)
    def trl(student) -> tuple[list[float], tuple[float, float]]:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(recipe.seed)
            got = _trl_run(job, student, teacher, items, batch, steps, recipe, _tokenizer(d), _pad_id(d), Path(tmp),
                           checkpointing, padding_free and job == "sft", compile, warm)
        if len(got[0]) != steps:
            _fail(f"TRL logged {len(got[0])} losses for {steps} steps")
        return got

    again = copy.deepcopy(init) if abba else None  # TRL trains the student it is given
    trl_losses, trl_s = trl(init)
    out = {"job": job, "db_loss": db_losses[-1], "trl_loss": trl_losses[-1],
           "d_first": abs(db_losses[0] - trl_losses[0]), "agree": _agree(db_losses, trl_losses)}
    if abba:  # TRL again, then doublebind again: a drift of the machine's speed cancels out of the means
        trl2_losses, trl2_s = trl(again)
        db2_losses, db2_s = _doublebind_run(Distiller(org, recipe, None, show_progress=False), steps, warm)
        out["repeats_equal"] = db2_losses == db_losses and trl2_losses == trl_losses
        out["halves"] = (tokens / db_s[0] / (tokens / trl_s[0]), tokens / db2_s[0] / (tokens / trl2_s[0]))
        db_s = ((db_s[0] + db2_s[0]) / 2, (db_s[1] + db2_s[1]) / 2)
        trl_s = ((trl_s[0] + trl2_s[0]) / 2, (trl_s[1] + trl2_s[1]) / 2)
    # The control, untimed and after the timed runs (with --abba their order is then exactly
    # doublebind, TRL, TRL, doublebind): doublebind again, its initial weights scaled by
    # (1 + 1e-7 noise), about the rounding difference between two implementations of the same loss.
    twin = Distiller(org, recipe, None, show_progress=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in twin.accelerator.unwrap_model(twin.model).parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=gen))
    twin_losses, _ = _doublebind_run(twin, steps)
    out.update(twin_loss=twin_losses[-1], twin_agree=_agree(db_losses, twin_losses))
    return {**out, "db_tps": tokens / db_s[0], "trl_tps": tokens / trl_s[0], "cpu_ratio": trl_s[1] / db_s[1]}


def _agree(a: list[float], b: list[float], rel: float = 1e-4) -> int:
    """How many steps two loss curves stay within `rel` of each other, from the first."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) > rel * max(abs(x), 1e-12)), len(a))


def _pad_id(d) -> int:
    pad = getattr(d.domain, "pad", None)
    if pad is not None:
        return pad
    from doublebind.world import vocab

    return vocab.token_ids()[vocab.PAD]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick", help="organism preset (quick, default)")
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps per job (at least 2)")
    ap.add_argument("--quick", action="store_true", help="20 steps, a smaller prompt set")
    ap.add_argument("--jobs", default="sft,soft-label", help="comma-separated: sft, soft-label")
    ap.add_argument("--trl-checkpointing", action="store_true",
                    help="leave TRL's default gradient checkpointing on (off by default: doublebind has none)")
    ap.add_argument("--padded", action="store_true",
                    help="doublebind pads its batches (training.packing=false) instead of packing them")
    ap.add_argument("--padding-free", action="store_true",
                    help="feed TRL's SFTTrainer padding-free batches (its own padding_free layout: one row, "
                         "positions restarting); GKDTrainer has no such mode and pads")
    ap.add_argument("--compile", action="store_true",
                    help="compile both sides: doublebind training.compile, TRL's torch_compile")
    ap.add_argument("--abba", action="store_true",
                    help="time each side twice, in the order doublebind, TRL, TRL, doublebind, and rate each by "
                         "the mean of its two timings")
    ap.add_argument("--warmup", type=int, default=None,
                    help="first steps left out of the timing (default 1; 10 with --compile)")
    args = ap.parse_args()
    steps = 20 if args.quick else args.steps
    warm = args.warmup if args.warmup is not None else (10 if args.compile else 1)
    if warm < 1:
        _fail(f"--warmup must be at least 1, got {warm}")
    if steps < warm + 1:
        _fail(f"--steps must be more than the {warm} warm-up step(s), got {steps}")
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown or not jobs:
        _fail(f"unknown job {unknown[0] if unknown else '(none)'!r}; jobs: {', '.join(JOBS)}")
    try:
        import trl  # noqa: F401
    except ModuleNotFoundError:
        _fail("TRL is not installed; pip install -e '.[bench]'")

    import torch

    from doublebind import config
    from doublebind.errors import DoublebindError
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    org = Path("runs/bench") / f"organism-{args.preset}"
    try:
        with one_thread():  # as `organism build` and a study build: one hash, one set of weights
            build_organism(config.load(preset=args.preset), org, show_progress=False)
        rows = [_job(org, j, steps, 400 if args.quick else 4000, args.trl_checkpointing, args.padded,
                     args.padding_free, args.compile, warm, args.abba) for j in jobs]
    except DoublebindError as e:
        _fail(str(e))
    print(f"doublebind vs TRL {trl.__version__} ({args.preset} organism, {steps} steps, batch 32, fp32, "
          f"{torch.get_num_threads()} thread(s); TRL gradient checkpointing {'on' if args.trl_checkpointing else 'off'}; "
          f"doublebind {'padded' if args.padded else 'packed'}; TRL SFT "
          f"{'padding-free' if args.padding_free else 'padded'}, GKD padded; "
          f"{'both compiled' if args.compile else 'eager'}; timed from step {warm + 1}"
          f"{'; ABBA: each side timed twice, doublebind, TRL, TRL, doublebind' if args.abba else ''})")
    head = f"{'job':<11} {'tok/s doublebind':>16} {'tok/s TRL':>10} {'ratio':>6} {'(CPU)':>6} {'|Δloss| step 1':>14} " \
           f"{'steps agreeing':>14} {'final loss doublebind':>21} {'TRL':>9} {'control':>9}"
    print(head)
    for r in rows:
        print(f"{r['job']:<11} {r['db_tps']:>16.0f} {r['trl_tps']:>10.0f} {r['db_tps'] / r['trl_tps']:>6.2f} "
              f"{r['cpu_ratio']:>6.2f} "
              f"{r['d_first']:>14.1e} {r['agree']:>6} (ctl {r['twin_agree']:>3}) {r['db_loss']:>21.6f} "
              f"{r['trl_loss']:>9.6f} {r['twin_loss']:>9.6f}")
        if "halves" in r:
            print(f"{'':<11} ABBA halves: {r['halves'][0]:.2f} (first doublebind / first TRL), {r['halves'][1]:.2f} "
                  f"(second / second); repeated runs' losses {'equal' if r['repeats_equal'] else 'DIFFER'}")
    print("ratio: doublebind / TRL tokens/s, by wall time and (CPU) by the process's CPU time, which other "
          "jobs on the machine move less. |Δloss| step 1: the same loss on the same weights and data. "
          "steps agreeing: steps from the first with losses within 1e-4 (relative) of doublebind's, for TRL and "
          "for the control, doublebind rerun from weights x (1 + 1e-7 noise); the control's final loss shows how "
          "far rounding alone moves the end of these runs.")


if __name__ == "__main__":
    main()
