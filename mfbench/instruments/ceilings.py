"""The machine's own ceilings, measured once and cached with their date (never datasheet figures).

- copy bandwidth: a large device-to-device (or, on the CPU, memory-to-memory) copy, counting bytes read
  plus bytes written;
- matmul rate: a large matrix product (bf16 on a GPU, float32 on the CPU);
- on-chip (shared-memory) bandwidth on a GPU: derived from the device's own report as
  multiprocessors x 128 bytes/clock x maximum SM clock (NVML); None where NVML cannot say.

A cached entry is used only on the machine that measured it and while it is younger than
MFBENCH_CEILINGS_MAX_AGE_DAYS (default 30): a home directory shared between hosts, or a figure taken on a
busy machine long ago, would otherwise set every floor. ``refresh`` measures again regardless.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mfbench.config import settings
from mfbench.instruments.fingerprint import device_name
from mfbench.instruments.timing import time_callable

SMEM_BYTES_PER_CLOCK = 128  # per multiprocessor per clock on Volta..Hopper: 32 banks x 4 bytes
MAX_AGE_DAYS = 30.0  # a policy, not a measurement: how long a machine is trusted to keep its speed


@dataclass(frozen=True)
class Ceilings:
    device: str
    copy_bytes_per_s: float
    matmul_flops_per_s: float
    matmul_dtype: str
    onchip_bytes_per_s: float | None
    onchip_how: str
    measured_utc: str
    torch: str
    machine: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def stale(self, now: _dt.datetime | None = None) -> str | None:
        """Why this cached entry must not be used on this machine now, or None."""
        if self.machine != socket.gethostname():
            return f"measured on another machine ({self.machine or 'unrecorded'})"
        now = now or _dt.datetime.now(_dt.timezone.utc)
        try:
            age = now - _dt.datetime.fromisoformat(self.measured_utc)
        except (TypeError, ValueError):
            return f"its date {self.measured_utc!r} cannot be read"
        limit = _max_age_days()
        if age.total_seconds() > limit * 86400 or age.total_seconds() < 0:
            return f"measured {age.total_seconds() / 86400:.0f} days ago (the limit is {limit:g})"
        return None


def _rate(value, name: str, optional: bool = False) -> str | None:
    """Why ``value`` cannot be the ceiling ``name`` (a finite positive number), or None."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} is {value!r}, not a number"
    if not math.isfinite(value) or value <= 0:
        return f"{name} is {value!r}, not a positive finite number"
    return None


def _from_cache(entry) -> tuple[Ceilings | None, str | None]:
    """(the cached entry, None), or (None, why it cannot be used): an entry of another layout or of values
    no measurement gives (text, 0, NaN, negative) would set every floor, or fail every item."""
    if not isinstance(entry, dict):
        return None, f"not an entry but {type(entry).__name__} {json.dumps(entry)[:40]}"
    try:
        cached = Ceilings(**entry)
    except TypeError:
        return None, "of an older layout"
    why = (_rate(cached.copy_bytes_per_s, "copy_bytes_per_s") or _rate(cached.matmul_flops_per_s, "matmul_flops_per_s")
           or _rate(cached.onchip_bytes_per_s, "onchip_bytes_per_s", optional=True)
           or next((f"{name} is {getattr(cached, name)!r}, not text" for name in
                    ("device", "matmul_dtype", "onchip_how", "measured_utc", "torch", "machine")
                    if not isinstance(getattr(cached, name), str)), None))
    return (None, f"invalid ({why})") if why else (cached, cached.stale())


def _load_cache(path: Path) -> dict:
    """The cache file's entries; an unreadable one, or valid JSON that is not an object of entries, is
    taken as empty (and said, where it is not simply absent): it is rewritten with what is measured next."""
    try:
        cache = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        cache = exc
    if not isinstance(cache, dict):
        why = f"cannot be read ({type(cache).__name__})" if isinstance(cache, Exception) else \
            f"holds {type(cache).__name__} {json.dumps(cache)[:40]}, not an object of entries"
        print(f"mfbench: the ceilings cache {path} {why}: measuring the ceilings again", file=sys.stderr)
        return {}
    return cache


def _max_age_days() -> float:
    days = settings().ceilings_max_age_days
    return MAX_AGE_DAYS if days is None else days


def _cache_path() -> Path:
    return Path(settings().cache_dir) / "ceilings.json"


def _onchip(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "not modelled on the CPU"
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return None, f"unknown: NVML could not give the SM clock ({type(exc).__name__})"
    return sms * SMEM_BYTES_PER_CLOCK * mhz * 1e6, f"{sms} SMs x {SMEM_BYTES_PER_CLOCK} B/clk x {mhz} MHz"


def _copy_seconds(n: int, device: torch.device) -> float:
    """Median time of copying ``n`` float32 values; the buffers are freed on return, before the matmul."""
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    return time_callable(lambda: dst.copy_(src), device).median_s


def measure(device: torch.device | str = "cpu") -> Ceilings:
    device = torch.device(device)
    gpu = device.type == "cuda"
    n = (1 << 28) if gpu else (1 << 25)  # 1 GiB / 128 MiB of float32: far beyond any cache
    copy_s = _copy_seconds(n, device)
    size, dtype = (8192, torch.bfloat16) if gpu else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    mm = time_callable(lambda: a @ b, device)
    onchip, how = _onchip(device)
    return Ceilings(
        device=device_name(device),
        copy_bytes_per_s=2 * n * 4 / copy_s,
        matmul_flops_per_s=2 * size**3 / mm.median_s,
        matmul_dtype=str(dtype).removeprefix("torch."),
        onchip_bytes_per_s=onchip,
        onchip_how=how,
        measured_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        machine=socket.gethostname(),
    )


def ceilings(device: torch.device | str = "cpu", refresh: bool = False) -> Ceilings:
    """This machine's ceilings for ``device``, from the cache unless absent or ``refresh``."""
    device = torch.device(device)
    key = f"{device_name(device)}|torch-{torch.__version__}"
    path = _cache_path()
    cache = _load_cache(path)
    if not refresh and key in cache:
        cached, why = _from_cache(cache[key])
        if cached and not why:
            return cached
        print(f"mfbench: the cached ceilings of {key} in {path} were {why}: measuring them again", file=sys.stderr)
    result = measure(device)
    cache[key] = result.as_dict()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks of a distributed run write at once
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still gets the figures, just not cached
    return result
