"""The GPU's state around a measurement, from NVML: clocks, temperature, power, throttle reasons, modes.

Rows taken seconds apart can differ because the clock dropped (heat, the power cap) rather than because
the code changed; without a record nothing can tell the two apart. ``GpuState.read`` takes one
snapshot, ``throttle_flags(before, after)`` says what went wrong in between, and ``ClockLock`` is the
opt-in ``--lock-clocks`` (it needs root on most machines, and it restores the default afterwards).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

# NVML's clocks-event (throttle) reason bits; the first three are not slowdowns of a busy GPU.
BENIGN = {0x1: "gpu-idle", 0x2: "applications-clocks-setting", 0x100: "display-clock-setting"}
SLOWDOWNS = {0x4: "sw-power-cap", 0x8: "hw-slowdown", 0x10: "sync-boost", 0x20: "sw-thermal-slowdown",
             0x40: "hw-thermal-slowdown", 0x80: "hw-power-brake-slowdown"}
CLOCK_DROP = 0.9  # an SM clock below this share of the higher of the two readings is a drop


@dataclass(frozen=True)
class GpuState:
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    throttle_reasons: int = 0
    persistence_mode: bool | None = None
    ecc_mode: bool | None = None
    mig_mode: bool | None = None
    reason: str | None = None  # why nothing could be read

    @classmethod
    def read(cls, device: torch.device | str = "cuda", nvml=None) -> "GpuState":
        """A snapshot of ``device``'s state; every field None (and ``reason`` set) where NVML is missing."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls(reason=f"no GPU state for device type {device.type!r}")
        try:
            nvml = nvml or _nvml()
            handle = nvml.nvmlDeviceGetHandleByIndex(device.index if device.index is not None else torch.cuda.current_device())
        except Exception as exc:  # noqa: BLE001 - no NVML is an answer, not a crash
            return cls(reason=f"NVML unavailable: {type(exc).__name__}: {exc}")

        def get(name: str, *args):
            try:
                return getattr(nvml, name)(handle, *args)
            except Exception:  # noqa: BLE001 - a query this GPU or driver does not support
                return None

        reasons = get("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = get("nvmlDeviceGetCurrentClocksThrottleReasons")
        power, limit = get("nvmlDeviceGetPowerUsage"), get("nvmlDeviceGetEnforcedPowerLimit")
        ecc, mig = get("nvmlDeviceGetEccMode"), get("nvmlDeviceGetMigMode")
        return cls(get("nvmlDeviceGetClockInfo", 1), get("nvmlDeviceGetClockInfo", 2),
                   get("nvmlDeviceGetMaxClockInfo", 1), get("nvmlDeviceGetTemperature", 0),
                   None if power is None else power / 1e3, None if limit is None else limit / 1e3,
                   int(reasons or 0), _flag(get("nvmlDeviceGetPersistenceMode")),
                   _flag(ecc[0] if isinstance(ecc, (list, tuple)) else ecc),
                   _flag(mig[0] if isinstance(mig, (list, tuple)) else mig))

    @property
    def slowdowns(self) -> list[str]:
        return [name for bit, name in SLOWDOWNS.items() if self.throttle_reasons & bit]

    def as_dict(self) -> dict:
        return asdict(self)


def _flag(value) -> bool | None:
    return None if value is None else bool(value)


def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def throttle_flags(before: GpuState, after: GpuState) -> list[str]:
    """Flags for a figure measured between two snapshots: ``throttled:REASON`` for a slowdown either saw,
    ``clock-dropped`` where the SM clock fell by more than a tenth."""
    flags = [f"throttled:{name}" for name in dict.fromkeys(before.slowdowns + after.slowdowns)]
    clocks = [c for c in (before.sm_clock_mhz, after.sm_clock_mhz) if c]
    if len(clocks) == 2 and min(clocks) < CLOCK_DROP * max(clocks):
        flags.append("clock-dropped")
    return flags


def state_rows(before: GpuState, after: GpuState) -> list[tuple[str, float, str, list[str]]]:
    """(metric, value, unit, flags) of the state around a measurement: the SM clock (the lower reading),
    memory clock, temperature and power (the reading after), each flagged as ``throttle_flags`` says."""
    if after.reason:
        return [("sm_clock", float("nan"), "MHz", [f"unavailable: {after.reason}"])]
    flags = throttle_flags(before, after)
    clocks = [c for c in (before.sm_clock_mhz, after.sm_clock_mhz) if c]
    out = [("sm_clock", float(min(clocks)) if clocks else float("nan"), "MHz", flags),
           ("mem_clock", _num(after.mem_clock_mhz), "MHz", []),
           ("gpu_temperature", _num(after.temperature_c), "C", []),
           ("gpu_power", _num(after.power_w), "W", [f"limit {after.power_limit_w:g} W"] if after.power_limit_w else [])]
    return out


def _num(value) -> float:
    return float("nan") if value is None else float(value)


class ClockLock:
    """``--lock-clocks``: the SM clock fixed at ``mhz`` for a run, where NVML permits it (root, a supported
    GPU), and reset to the default when the run ends. ``refused`` says why it could not be locked."""

    def __init__(self, device: torch.device | str, mhz: int, nvml=None) -> None:
        self.mhz, self.refused, self._handle = mhz, None, None
        try:
            self._nvml = nvml or _nvml()
            device = torch.device(device)
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception as exc:  # noqa: BLE001
            self.refused = f"NVML unavailable: {exc}"

    @contextlib.contextmanager
    def held(self) -> Iterator["ClockLock"]:
        if self._handle is not None:
            try:
                self._nvml.nvmlDeviceSetGpuLockedClocks(self._handle, self.mhz, self.mhz)
            except Exception as exc:  # noqa: BLE001 - not permitted here: say so, run unlocked
                self.refused = f"{type(exc).__name__}: {exc}"
        try:
            yield self
        finally:
            if self._handle is not None and self.refused is None:
                self._nvml.nvmlDeviceResetGpuLockedClocks(self._handle)

    @property
    def flag(self) -> str:
        return f"clock-locked:{self.mhz}MHz" if self.refused is None else "clock-lock-refused"
