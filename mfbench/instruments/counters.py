"""Hardware counters of one call, from Nsight Compute (``ncu``): bytes moved, hit rates, throughput.

``ncu_command`` wraps a target command that marks the one call to profile with cudaProfilerStart/Stop
(``--profile-from-start off``); ``--clock-control none`` leaves the GPU's clocks as they are (ncu would
otherwise lock them to base, which is neither what the timings saw nor ours to change). ``parse`` reads
ncu's raw CSV page (base units) and ``aggregate`` sums its results: bytes add up, percentages are weighted
by each result's duration.

Two replay modes (``REPLAY``). ``kernel`` replays each kernel once per counter pass, with the caches
flushed before each kernel: a result per kernel, but a call of many kernels pays for each (the reference's
477 took five minutes for its first case on the H200) and never finds in L2 what the kernel before it left
there. ``range`` replays the whole marked call once per pass, caches flushed only before it: one result for
the call, the bytes it moves as it runs (the same case in 9 s). A range result does not count the call's
kernels; the caller counts them (``timing.device_activity``).
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import asdict, dataclass

METRICS = {
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__bytes_write.sum": "dram_write_bytes",
    "lts__t_bytes.sum": "l2_bytes",
    "l1tex__t_sector_hit_rate.pct": "l1_hit_rate",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_throughput",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "memory_throughput",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy",
    "gpu__time_duration.sum": "duration_ns",
}
WEIGHTED = ("l1_hit_rate", "sm_throughput", "memory_throughput", "occupancy")  # percentages


@dataclass(frozen=True)
class CallCounters:
    kernels: int
    dram_read_bytes: float
    dram_write_bytes: float
    l2_bytes: float
    l1_hit_rate: float  # %, duration-weighted over the call's kernels
    sm_throughput: float  # % of peak
    memory_throughput: float  # % of peak
    occupancy: float  # achieved, % of peak
    duration_s: float

    @property
    def dram_bytes(self) -> float:
        return self.dram_read_bytes + self.dram_write_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "dram_bytes": self.dram_bytes}


def ncu_path() -> str | None:
    return shutil.which("ncu")


REPLAY = ("range", "kernel")


def ncu_command(target: list[str], ncu: str = "ncu", replay: str = "range") -> list[str]:
    if replay not in REPLAY:
        raise ValueError(f"replay is one of {', '.join(REPLAY)}, not {replay!r}")
    # A range is what cudaProfilerStart/Stop enclose; ncu refuses --profile-from-start in range replay.
    marked = ["--profile-from-start", "off"] if replay == "kernel" else []
    return [ncu, "--replay-mode", replay, "--clock-control", "none", *marked, "--csv", "--page", "raw",
            "--print-units", "base", "--metrics", ",".join(METRICS), *target]


class CounterError(Exception):
    """ncu ran but gave no counters (not permitted, no kernel profiled); the message says which."""


def parse(text: str) -> list[dict[str, float]]:
    """One dict per result (a kernel, or a replayed range), keyed by ``METRICS``' short names, from ncu's raw CSV page."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        errors = [line for line in lines if "ERR_" in line or "==ERROR==" in line or "==WARNING==" in line]
        raise CounterError((errors[0] if errors else "ncu printed no counter table").strip())
    table = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, rows = table[0], table[1:]
    if rows and rows[0] and rows[0][0] == "":  # the units row
        rows = rows[1:]
    kernels = []
    for row in rows:
        if len(row) != len(header):
            continue
        record = dict(zip(header, row))
        kernels.append({short: _number(record.get(name, "")) for name, short in METRICS.items()})
    if not kernels:
        raise CounterError("ncu profiled no kernel (was cudaProfilerStart reached?)")
    return kernels


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return float("nan")


def aggregate(kernels: list[dict[str, float]]) -> CallCounters:
    total_ns = sum(k["duration_ns"] for k in kernels)

    def weighted(name: str) -> float:
        if total_ns <= 0:
            return sum(k[name] for k in kernels) / len(kernels)
        return sum(k[name] * k["duration_ns"] for k in kernels) / total_ns

    sums = {name: sum(k[name] for k in kernels) for name in ("dram_read_bytes", "dram_write_bytes", "l2_bytes")}
    return CallCounters(len(kernels), **sums, **{name: weighted(name) for name in WEIGHTED},
                        duration_s=total_ns / 1e9)
