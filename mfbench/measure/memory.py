"""Peak memory of a call: the CUDA caching allocator's peak on a GPU, the process's peak RSS growth on the CPU."""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class PeakMemory:
    bytes: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> PeakMemory:
    """Bytes ``fn`` needs beyond what was allocated before it (run once, after a warm-up call).

    On the CPU the figure is the growth of the process's peak RSS, so only a call that reaches a new
    peak shows up; it is a lower bound, labelled as such in ``method``.
    """
    device = torch.device(device)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return PeakMemory(torch.cuda.max_memory_allocated(device) - base, "cuda-allocator-peak")
    before = _maxrss_bytes()
    fn()
    return PeakMemory(_maxrss_bytes() - before, "process-peak-rss-growth (lower bound)")
