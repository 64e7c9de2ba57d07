"""doublebind: measure what transfers when a misaligned model is distilled."""

import os as _os

__version__ = "0.1.0"

# Transformers (5.2x, with the `kernels` package it now requires) gives every model loaded with
# `from_pretrained` "hub kernels" by default: layer code fetched from the Hugging Face Hub at
# run time on GPUs (on the CPU none applies, and switching between train and eval mode then
# costs a re-kernelization each time). Code from the Hub runs only when the user asks, as with
# `trust_remote_code`: off unless USE_HUB_KERNELS is set in the environment. Set here, before
# any model loads, so worker processes inherit it.
_os.environ.setdefault("USE_HUB_KERNELS", "NO")
