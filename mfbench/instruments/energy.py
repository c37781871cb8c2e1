"""Energy in measurement windows, from NVML's total-energy counter (millijoules since driver load).

The counter ticks about every 100 ms, so ``measure_energy`` repeats the call until the window lasts at
least ``min_seconds`` and divides. Where the counter is unsupported, a background thread samples
``nvmlDeviceGetPowerUsage`` and integrates. Without NVML every figure is None and ``reason`` says why:
energy is never reported as 0 for "not measured".
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from mfbench.instruments.rapl import RaplMeter, RaplWindow


@dataclass(frozen=True)
class EnergyResult:
    method: str  # "nvml-energy-counter", "nvml-power-sampling" or "unavailable"
    joules: float | None
    seconds: float
    calls: int
    reason: str | None = None
    cpu: "RaplWindow | None" = None  # CPU package and DRAM energy over the same window, where RAPL reads

    @property
    def available(self) -> bool:
        return self.joules is not None

    @property
    def joules_per_call(self) -> float | None:
        return None if self.joules is None else self.joules / self.calls

    @property
    def watts(self) -> float | None:
        return None if self.joules is None or self.seconds <= 0 else self.joules / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "joules_per_call": self.joules_per_call, "watts": self.watts}


def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


class EnergyMeter:
    """Zeus-style windows on one GPU: ``begin_window(name)`` ... ``end_window(name, calls)``."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        device = torch.device(device)
        self.reason: str | None = None
        self.method = "unavailable"
        self._windows: dict[str, tuple[float, float | None]] = {}
        self._sampler: _PowerSampler | None = None
        if device.type != "cuda":
            self.reason = f"no energy counter for device type {device.type!r} (NVML covers NVIDIA GPUs)"
            return
        try:
            self._nvml = _nvml()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self.method = "nvml-energy-counter"
        except Exception:
            try:
                self._nvml.nvmlDeviceGetPowerUsage(self._handle)
                self.method = "nvml-power-sampling"
            except Exception as exc:
                self.reason = f"neither NVML's energy counter nor its power reading works: {exc}"

    @property
    def available(self) -> bool:
        return self.reason is None

    def _read_joules(self) -> float | None:
        if self.method == "nvml-energy-counter":
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3
        return None

    def begin_window(self, name: str) -> None:
        if name in self._windows:
            raise ValueError(f"window {name!r} is already open")
        if self.available:
            torch.cuda.synchronize()
        if self.method == "nvml-power-sampling":
            self._sampler = _PowerSampler(self._nvml, self._handle)
            self._sampler.start()
        self._windows[name] = (time.perf_counter(), self._read_joules() if self.available else None)

    def end_window(self, name: str, calls: int = 1) -> EnergyResult:
        try:
            start, joules0 = self._windows.pop(name)
        except KeyError:
            raise ValueError(f"no open window {name!r}") from None
        if self.available:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if not self.available:
            return EnergyResult("unavailable", None, seconds, calls, self.reason)
        if self.method == "nvml-power-sampling":
            joules = self._sampler.stop()
        else:
            joules = self._read_joules() - joules0
        return EnergyResult(self.method, joules, seconds, calls)


class _PowerSampler(threading.Thread):
    def __init__(self, nvml, handle, period_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self._nvml, self._handle, self._period = nvml, handle, period_s
        self._stop_event = threading.Event()
        self._joules = 0.0

    def run(self) -> None:
        last = time.perf_counter()
        while not self._stop_event.is_set():
            time.sleep(self._period)
            now = time.perf_counter()
            self._joules += self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3 * (now - last)
            last = now

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self._joules


def measure_energy(fn: Callable[[], object], device: torch.device | str, min_seconds: float = 1.0,
                   meter: EnergyMeter | None = None, rapl: RaplMeter | None = None) -> EnergyResult:
    """Energy per call of ``fn``: repeat it in one window lasting at least ``min_seconds``; the GPU's from
    NVML and, with ``rapl``, the CPU package's and DRAM's over the same window."""
    device = torch.device(device)
    meter = meter or EnergyMeter(device)
    cpu_on = rapl is not None and rapl.available
    if not meter.available and not cpu_on:
        return EnergyResult("unavailable", None, 0.0, 1, meter.reason)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    per_call = max(time.perf_counter() - t0, 1e-6)
    batch = max(1, int(min_seconds / per_call / 4))
    return _window(meter, rapl if cpu_on else None, "measure", lambda: _repeat(fn, batch, sync, min_seconds))


def _repeat(fn: Callable[[], object], batch: int, sync: Callable[[], None], min_seconds: float) -> int:
    # Batches without a sync between calls keep the device busy; the window closes only once it has
    # lasted min_seconds, however the first estimate of a call's time turned out.
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        sync()
        if time.perf_counter() - start >= min_seconds:
            return calls


def _window(meter: EnergyMeter, rapl: RaplMeter | None, name: str, body: Callable[[], int]) -> EnergyResult:
    """Run ``body`` (it returns its number of calls) inside a GPU window and a RAPL window together."""
    if meter.available:
        meter.begin_window(name)
    cpu_start = rapl.begin() if rapl is not None else None
    start = time.perf_counter()
    calls = body()
    cpu = rapl.end(cpu_start) if rapl is not None else None
    if meter.available:
        return replace(meter.end_window(name, calls), cpu=cpu)
    return EnergyResult("unavailable", None, time.perf_counter() - start, calls, meter.reason, cpu=cpu)


def idle_power(device: torch.device | str, seconds: float = 1.0, meter: EnergyMeter | None = None,
               rapl: RaplMeter | None = None) -> EnergyResult:
    """The device's draw while nothing runs, over a window of ``seconds`` (and the CPU's, with ``rapl``)."""
    meter = meter or EnergyMeter(device)
    cpu_on = rapl is not None and rapl.available
    if not meter.available and not cpu_on:
        return EnergyResult("unavailable", None, 0.0, 1, meter.reason)
    return _window(meter, rapl if cpu_on else None, "idle", lambda: time.sleep(seconds) or 1)
