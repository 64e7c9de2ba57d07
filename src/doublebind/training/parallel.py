"""Data-parallel helpers for the distillation loop (accelerate DDP, one process per device).

Every process draws the same step items from the same seeded RNG; each then trains on its own
shard, with every loss still divided by the token count of the *whole* step and multiplied by
the number of processes (DDP averages gradients), so the summed gradient equals one process's.

    accelerate launch --config_file configs/accelerate/ddp.yaml -m doublebind distill ...

On CPU (tests), `accelerate launch --multi_gpu --num_processes 2 --num_cpu_threads_per_process 1`
starts two processes through torchrun; `Accelerator(cpu=True)` then picks MULTI_CPU over gloo.
(`accelerate launch --cpu --num_processes 2` starts a single process unless an MPI hostfile
is given.) tests/test_ddp.py checks that 2 processes give the 1-process gradient and weights.

Only the main process writes a run's files; every process runs the evals (deterministic, and
the weights are identical on every rank), so no collective sits in a main-only branch.

What configs/accelerate/fsdp.yaml and deepspeed_*.yaml still need in the Distiller (untested
here, no GPU):
- FSDP2: the model and optimiser are already prepared together (what accelerate's FSDP2
  requires). Checkpoints: `save_student` runs on the main process only and would save local
  shards; it needs `accelerator.get_state_dict(model)` called on *every* process first. Evals
  and sampling on the unwrapped model all-gather weights inside forward, so they must keep
  running on every process with the same inputs (as they do now).
- DeepSpeed: `accelerator.backward` steps the engine whenever `accelerator.sync_gradients` is
  true, i.e. after every micro-batch here; set it false for all but the last micro-batch (or
  use `accelerator.accumulate`). With no dataloader prepared, set
  `deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch` before
  `prepare`. Clipping is DeepSpeed's (`gradient_clipping` in the config; accelerate's
  `clip_grad_norm_` does nothing). ZeRO-3 checkpoints also need `get_state_dict` on every
  process (with `zero3_save_16bit_model: true`).

- Either: the distiller's AdamW is torch's fused kernel (`Loop(fused=True)`), chosen before
  `prepare` on plain CPU/CUDA parameters; under FSDP2 it then steps DTensor shards, which
  torch's fused AdamW supports on CUDA but nobody has run here.

Device and precision: a run trains where its domain's models live (`distill.train_device`:
CUDA for HF organisms when there is a GPU, the CPU for the embedded world); batches and
soft-label rows are moved to the model's device inside the loss; `training.precision: bf16`
is a torch.autocast context around the step's forward passes (not accelerate's
`mixed_precision`, which is fixed per process).

`study run` under several processes: every process trains each run, and only the main one
builds the organism and appends the study's rows (src/doublebind/studies/run.py).
"""

from __future__ import annotations

import contextlib

import torch

from doublebind.errors import DoublebindError


def shard(items: list, rank: int, world: int, batch: int) -> list[list]:
    """This process's micro-batches of the step: items[rank::world], at most `batch` each.

    With one process this is exactly items[0:batch], items[batch:2*batch], ..."""
    if len(items) < world:
        raise DoublebindError(f"training.batch x training.grad_accum = {len(items)} examples per step, "
                              f"fewer than the {world} processes; raise the batch or use fewer processes")
    mine = items[rank::world]
    return [mine[i : i + batch] for i in range(0, len(mine), batch)]


def sync_unless_last(accelerator, model, last: bool):
    """DDP all-reduces gradients on the last micro-batch only; earlier ones accumulate locally."""
    if last or accelerator.num_processes == 1:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def reduce_sum(accelerator, value: float) -> float:
    """The sum of a Python float over processes (the value itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, "sum").item())


def any_process(accelerator, flag: bool) -> bool:
    """True if `flag` is true on any process (every process must call this)."""
    if accelerator.num_processes == 1:
        return flag
    return reduce_sum(accelerator, float(bool(flag))) > 0
