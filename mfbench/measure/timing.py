"""Wall time of a callable: Triton's do_bench (CUDA events, L2 flushed) on a GPU, torch's calibrated
``blocked_autorange`` on the CPU. Warm-up and compilation are kept out of the figure on both."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    samples: int
    method: str

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    def as_dict(self) -> dict:
        return asdict(self)


def _summarise(times_s: list[float], method: str) -> Timing:
    if len(times_s) >= 4:
        q1, _, q3 = statistics.quantiles(times_s, n=4)
    else:
        q1 = q3 = statistics.median(times_s)
    return Timing(statistics.median(times_s), q1, q3, min(times_s), max(times_s), len(times_s), method)


def time_callable(fn: Callable[[], object], device: torch.device | str, *, warmup_ms: float = 25.0,
                  rep_ms: float = 100.0, min_run_time_s: float = 0.2) -> Timing:
    """Median time of ``fn()`` on ``device`` with its spread and sample count."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        times_ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return _summarise([t / 1e3 for t in times_ms], "triton.testing.do_bench")
    from torch.utils.benchmark import Timer

    fn()  # warm-up: first-call allocation, lazy initialisation and compilation stay out of the figure
    measurement = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time_s)
    # blocked_autorange reports per-call times, one per block of calls.
    return _summarise(list(measurement.times), "torch.utils.benchmark.blocked_autorange")
