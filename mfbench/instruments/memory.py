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


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: 5 into /proc/self/clear_refs); False where impossible.

    ru_maxrss cannot serve here: Linux carries it across exec, so a process started by a big parent
    (a test runner, say) begins with the parent's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The peak RSS since the last reset (VmHWM), or None off Linux."""
    hwm = _status_kib("VmHWM")
    return None if hwm is None else hwm * 1024


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> PeakMemory:
    """Bytes ``fn`` needs beyond what was allocated before it (run once, after a warm-up call).

    On the CPU: the peak RSS during the call minus the RSS before it, with the peak mark reset first
    (Linux); where it cannot be reset, the growth of the process's peak RSS, a lower bound, labelled so.
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
    rss = _status_kib("VmRSS")
    if rss is not None and reset_peak_rss():
        fn()
        return PeakMemory(max(0, peak_rss_bytes() - rss * 1024), "process-peak-rss")
    before = _maxrss_bytes()
    fn()
    return PeakMemory(_maxrss_bytes() - before, "process-peak-rss-growth (lower bound)")
