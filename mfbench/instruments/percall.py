"""What one call costs outside the kernels' own time, for the kernel alert: deterministic per-call counts
(kernel launches, host-device synchronisations, device bytes allocated, torch operators dispatched) and
samples of the eager call's time, host included.

The counts need no statistics: a change that adds a launch, an allocation or a synchronisation per call
costs every eager user, and none of it shows in CUDA-graph replay time.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch

from mfbench.instruments.timing import SYNCHRONISING, device_activity, sync_debug

EAGER_METHOD = "eager-calls-synchronised"  # wall time of a window of calls ended by a synchronize, per call


def op_count(fn: Callable[[], object], calls: int = 5) -> float:
    """torch operators dispatched per call (the CPU profiler's op events, nested ones included), after a
    warm-up call. Device-independent, so it is the count a CPU run can check."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events at the end of each cycle")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
    return sum(1 for e in prof.profiler.kineto_results.events() if e.name().startswith("aten::")) / calls


def sync_count(fn: Callable[[], object], calls: int = 5) -> float:
    """Host-device synchronisations per call, as torch's sync debug mode reports them (one warning each)."""
    fn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sync_debug("warn"):
            for _ in range(calls):
                fn()
    return sum(1 for w in caught if SYNCHRONISING in str(w.message)) / calls


def allocated_bytes(fn: Callable[[], object], device: torch.device, calls: int = 5) -> float:
    """Device bytes the caching allocator handed out per call (allocated_bytes.all.allocated, a running
    total: every allocation counts, freed or not)."""
    fn()
    torch.cuda.synchronize(device)
    key = "allocated_bytes.all.allocated"
    before = torch.cuda.memory_stats(device)[key]
    for _ in range(calls):
        fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.memory_stats(device)[key] - before) / calls


def call_counts(fn: Callable[[], object], device: torch.device | str, calls: int = 5) -> dict[str, float | None]:
    """{kernels, syncs, bytes, ops} per call; on a CPU only ``ops`` (the others are None). Raises where a
    GPU count cannot be taken: the alert then fails closed. Run it after every time measurement of the
    process: the profiler slows later launches (``mfbench.instruments.timing``)."""
    device = torch.device(device)
    counts: dict[str, float | None] = {"kernels": None, "syncs": None, "bytes": None,
                                       "ops": op_count(fn, calls)}
    if device.type == "cuda":
        activity = device_activity(fn, device, calls)
        counts.update(kernels=activity.kernels if activity else 0.0, syncs=sync_count(fn, calls),
                      bytes=allocated_bytes(fn, device, calls))
    return counts


def eager_samples(fn: Callable[[], object], device: torch.device | str, calls: int = 20, samples: int = 15,
                  budget_s: float = 0.75) -> list[float]:
    """Per-call seconds of ``fn`` called eagerly ``calls`` times in a row and synchronised once, a sample
    per window, after a warm-up window: what an eager user waits, host included. A slow call gets fewer
    windows (at least 5) so that they take about ``budget_s``."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def window() -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    first = window()
    count = max(5, min(samples, int(budget_s / max(first * calls, 1e-9))))
    return [window() for _ in range(count)]
