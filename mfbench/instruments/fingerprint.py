"""What machine a figure was measured on: the fields every result row carries."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

import mfbench
from mfbench.config import settings


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _compile_threads() -> int | None:
    try:
        import torch._inductor.config as inductor

        return inductor.compile_threads
    except Exception:  # a torch without Inductor
        return None


def _nvml_driver() -> tuple[str | None, str | None]:
    """(driver version, reason it is unknown)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return (version.decode() if isinstance(version, bytes) else version), None
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no library, no driver, no device: all mean "unknown", not an error
        return None, f"NVML unavailable: {type(exc).__name__}"


@lru_cache(maxsize=None)
def git_commit(path: str | None = None) -> tuple[str, bool]:
    """(commit hash, dirty) of the source tree mfbench runs from; ('unknown', False) outside git.

    A copy of a tree without its .git (a lent GPU host, a CI artefact) can name its commit in
    MFBENCH_COMMIT (and MFBENCH_DIRTY=1 if it differs from that commit).
    """
    env = settings()
    if env.commit:
        return env.commit, env.dirty
    root = path or str(Path(mfbench.__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def device_name(device: torch.device | str = "cpu") -> str:
    """A short name that tells accelerators apart: the GPU model, or 'cpu-<N>cores'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace("NVIDIA ", "").replace(" ", "-")
    return f"cpu-{os.cpu_count()}cores"


def fingerprint(device: torch.device | str = "cpu") -> dict:
    """Machine, device and software versions, as plain values."""
    device = torch.device(device)
    info = {
        "machine": socket.gethostname(),
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        # CPU threads this process may use: torchrun ranks get fewer, and that changes CPU-side figures
        "torch_threads": torch.get_num_threads(),
        "compile_threads": _compile_threads(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "mfbench": mfbench.__version__,
        "cuda": torch.version.cuda,
        "gpu": None,
        "gpu_memory_gib": None,
        "gpu_sms": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        index = device.index if device.type == "cuda" and device.index is not None else 0
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_sms=props.multi_processor_count)
        info["driver"], _ = _nvml_driver()
    return info
