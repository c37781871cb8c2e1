"""mfbench: what MemoryFormer costs in time, bytes, joules and accuracy on real hardware."""

import time

# When this process first imported mfbench: a distributed rank reports its set-up time from here.
IMPORTED = time.perf_counter()

__version__ = "0.1.0"

# The public provider API (README, "Benchmark your own kernel"), loaded on first use: importing mfbench
# stays free of torch, and of plugins.
PUBLIC = {"Provider", "register_provider", "ProviderUnavailable"}


def __getattr__(name: str):
    if name in PUBLIC:
        # the registry, not mfbench.core.providers: a plugin may register while that module is still
        # importing the model, whose presets are the registry's first question
        from mfbench.core import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'mfbench' has no attribute {name!r}")
