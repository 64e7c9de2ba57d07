"""Process-wide CUDA settings, each with its reason. None of them touches a CPU run.

**cuDNN attention goes last.** PyTorch picks a kernel for each `scaled_dot_product_attention`
call from a priority list. On data-centre Hopper and Blackwell GPUs (compute capability 9.0
and 10.x; on CUDA 12 builds only minor versions 0 and 3), with cuDNN newer than 9.15, recent
releases put cuDNN's kernel first (PyTorch's `check_prefer_cudnn_attention`, in
aten/src/ATen/native/transformers/cuda/sdp_utils.cpp). That kernel needs half precision, so
it is chosen under `training.precision: bf16` and for bf16 organisms.

The cost: cuDNN builds an execution graph for every new shape (batch, query and key lengths,
strides) and keeps it in a per-thread cache. Other projects report 260-400 ms a build (not
measured here). Here the shapes keep changing:
- a training step's padded batch has a new length almost every step;
- a sampling step has a new key length every token.

So nearly every call would pay a build. On an H200 (torch 2.11+cu130, `benchmarks/gpu_check.py`,
2026-12-04), a bf16 step of the tiny recipe took 1140 ms against 14.3 ms in fp32, where
cuDNN's kernel is never eligible. The cause was inferred from PyTorch's source and other
projects' reports, not measured there; the GPU check now times bf16 both ways and names the
kernel each ran.

`prefer_stable_attention` sets `TORCH_CUDNN_SDPA_DEPRIORITIZED=1`, PyTorch's own switch,
unless the variable is already set. PyTorch reads it once, at the process's first attention
call on a GPU. The order is then PyTorch's default: flash, memory-efficient, the unfused math
kernel, and cuDNN last, so in practice cuDNN is not used. To prefer it again (fixed shapes,
long runs that reuse them), set `TORCH_CUDNN_SDPA_DEPRIORITIZED=0`.

Where it is set: the CLI, before every command (study workers, spawned after, inherit it);
`run_study` and the distiller, for library use. Library code that runs attention on a GPU
before either (`build_organism` of a Hugging Face organism, called directly) should call it
first. A PyTorch release without the switch ignores the variable.
"""

from __future__ import annotations

import os

ATTENTION_ENV = "TORCH_CUDNN_SDPA_DEPRIORITIZED"


def prefer_stable_attention(environ=os.environ) -> bool:
    """Put cuDNN attention last (see the module docstring), unless the user has set the
    variable. Returns whether this call set it."""
    if environ.get(ATTENTION_ENV, "").strip():
        return False
    environ[ATTENTION_ENV] = "1"
    return True


def release_memory() -> None:
    """Hand the GPU memory of what is no longer referenced back to the device: a collection
    first (a finished run's student, optimizer state and the organism's models sit in reference
    cycles that wait for one), then the caching allocator's free blocks. vLLM measures free
    device memory when it starts, and counts memory torch's allocator still holds as used. A
    no-op without a GPU."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
