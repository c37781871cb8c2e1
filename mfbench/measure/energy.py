"""Energy in measurement windows, from NVML's total-energy counter (millijoules since driver load).

The counter ticks about every 100 ms, so ``measure_energy`` repeats the call until the window lasts at
least ``min_seconds`` and divides. Where the counter is unsupported, a background thread samples
``nvmlDeviceGetPowerUsage`` and integrates. Without NVML every figure is None and ``reason`` says why:
energy is never reported as 0 for "not measured".
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class EnergyResult:
    method: str  # "nvml-energy-counter", "nvml-power-sampling" or "unavailable"
    joules: float | None
    seconds: float
    calls: int
    reason: str | None = None

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
                   meter: EnergyMeter | None = None) -> EnergyResult:
    """Energy per call of ``fn``: repeat it in one window lasting at least ``min_seconds``."""
    meter = meter or EnergyMeter(device)
    if not meter.available:
        return EnergyResult("unavailable", None, 0.0, 1, meter.reason)
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    per_call = max(time.perf_counter() - t0, 1e-6)
    batch = max(1, int(min_seconds / per_call / 4))
    calls = 0
    meter.begin_window("measure")
    start = time.perf_counter()
    # Batches without a sync between calls keep the device busy; the window closes only once it has
    # lasted min_seconds, however the first estimate of a call's time turned out.
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        torch.cuda.synchronize()
        if time.perf_counter() - start >= min_seconds:
            break
    return meter.end_window("measure", calls)


def idle_power(device: torch.device | str, seconds: float = 1.0, meter: EnergyMeter | None = None) -> EnergyResult:
    """The device's draw while nothing runs, over a window of ``seconds``."""
    meter = meter or EnergyMeter(device)
    if not meter.available:
        return EnergyResult("unavailable", None, 0.0, 1, meter.reason)
    meter.begin_window("idle")
    time.sleep(seconds)
    return meter.end_window("idle", 1)
