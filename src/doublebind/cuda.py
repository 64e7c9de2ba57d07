"""Process-wide CUDA settings, each with its reason. None of them touches a CPU run.

**cuDNN attention goes last.** PyTorch picks a kernel for each `scaled_dot_product_attention`
call from a priority list. On Hopper and Blackwell GPUs (compute capability 9.x and 10.x),
with cuDNN newer than 9.15, recent releases put cuDNN's kernel first (PyTorch's
`check_prefer_cudnn_attention`, in aten/src/ATen/native/transformers/cuda/sdp_utils.cpp). That kernel needs half
precision, so it is chosen under `training.precision: bf16` and for bf16 organisms.

The cost: cuDNN builds an execution graph for every new shape (batch, query and key lengths,
strides) and keeps it in a per-thread cache. A build takes hundreds of milliseconds. Here
the shapes keep changing:
- a training step's padded batch has a new length almost every step;
- a sampling step has a new key length every token.

So nearly every call pays a build. On an H200 (torch 2.11+cu130, `benchmarks/gpu_check.py`,
2026-12-04), a bf16 step of the tiny recipe took 1140 ms against 14.3 ms in fp32, where
cuDNN's kernel is never eligible. The cause was inferred from PyTorch's source and other
projects' reports, not measured there; the GPU check now times bf16 both ways and names the
kernel each ran.

`prefer_stable_attention` sets `TORCH_CUDNN_SDPA_DEPRIORITIZED=1`, PyTorch's own switch,
unless the variable is already set. PyTorch reads it once, at the process's first attention
call on a GPU. Flash and memory-efficient attention then come first, and cuDNN stays
available when neither can run. To prefer cuDNN again (fixed shapes, long runs that reuse
them), set `TORCH_CUDNN_SDPA_DEPRIORITIZED=0`.

The CLI applies this before every command; study workers inherit the environment; the
distiller applies it too, for library use. A PyTorch release without the switch ignores
the variable.
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
