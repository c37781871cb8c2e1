"""mfbench: what MemoryFormer costs in time, bytes, joules and accuracy on real hardware."""

import os
import time

# When this process first imported mfbench: a distributed rank reports its set-up time from here.
IMPORTED = time.perf_counter()

__version__ = "0.1.0"

# One Triton cache for every mfbench process. Otherwise the first torch.compile'd kernel of a process
# points TRITON_CACHE_DIR at Inductor's per-device folder (/tmp/torchinductor_USER/triton/<device index>),
# so our kernels' compiled binaries and autotuning results land in a different place for cuda:0 and
# cuda:1, and before and after a process's first compile: seen on nvidia-h200-x2, where each rank of a
# warm distributed run re-tuned and re-compiled the lookup kernels (up to 28 s of a 57 s share).
# Triton's own default location; a TRITON_CACHE_DIR set by the user wins.
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ.get("TRITON_HOME", os.path.expanduser("~")),
                                                       ".triton", "cache"))

# The public provider API (README, "Benchmark your own kernel"), loaded on first use: importing mfbench
# stays free of torch, and of plugins.
PUBLIC = {"Provider", "register_provider", "ProviderUnavailable"}


def __getattr__(name: str):
    if name in PUBLIC:
        from mfbench.core import providers

        return getattr(providers, name)
    raise AttributeError(f"module 'mfbench' has no attribute {name!r}")
