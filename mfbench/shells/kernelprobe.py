"""The kernel probe: samples of the kernels' own time for Memory Layer calls, every set in one process,
written as JSON. The kernel alert (``mfbench.shells.alert``) runs it once per commit and round, in that commit's
checkout, so each commit measures its own kernels.

    python -m mfbench.shells.kernelprobe --providers triton --seqs 2048,8192 --out probe.json

On a GPU each set's call is captured ``--calls`` times in one CUDA graph and the graph is replayed
``--replays`` times, one sample per replay (``timing.graph_samples``): the host's speed stays out of the
figure. A call that cannot be captured is timed by its CUPTI busy time instead, after every graph set
(``timing.cupti_samples``), and its entry says so. On the CPU a sample is one call's process CPU time.

A set this machine cannot run at all (the registry's static requirement: no CUDA, no Triton) is
``unavailable``; a set that raises is ``failed`` with the reason. Neither stops the other sets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from mfbench.config import triton_cache_env
from mfbench.core import providers
from mfbench.bench.cases import DTYPES, Item
from mfbench.bench.subject import prepare_on_stream
from mfbench.core.lookup import input_checks
from mfbench.instruments.fingerprint import device_name
from mfbench.instruments.timing import CPU_METHOD, CUPTI_METHOD, GRAPH_METHOD, cpu_samples, cupti_samples, graph_samples
from mfbench.core.model import ModelConfig

SCHEMA = "mfbench-kernelprobe/1"
DIRECTIONS = ("forward", "backward")


def set_key(provider: str, direction: str, seq: int) -> str:
    """How a set is named on the command line (``--only``) and in reports."""
    return f"{provider}/{direction}/{seq}"


def default_seqs(device: str) -> list[int]:
    """The token counts measured unless asked otherwise: the default GPU matrix, or short CPU ones."""
    return [2048, 8192, 32768] if device.startswith("cuda") else [128, 512]


def measure(device: torch.device, names: list[str], directions: list[str], seqs: list[int], dtype: torch.dtype,
            preset: str, calls: int = 20, replays: int = 25, only: set[str] | None = None,
            progress: Callable[[str], None] = lambda message: None) -> list[dict]:
    """One entry per (provider, direction, seq): status, reason, method and per-call samples in seconds."""
    cfg = ModelConfig.preset(preset)
    entries, deferred = [], []
    for direction, seq, name in itertools.product(directions, seqs, names):
        if only is not None and set_key(name, direction, seq) not in only:
            continue
        entry = {"provider": name, "direction": direction, "seq": seq, "dtype": str(dtype).removeprefix("torch."),
                 "status": "ok", "reason": "", "method": "", "samples_s": []}
        entries.append(entry)
        reason = providers.requirement_unmet(name, str(device), dtype)
        if reason:
            entry.update(status="unavailable", reason=reason)
            progress(f"{set_key(name, direction, seq)}: unavailable: {reason}")
            continue
        item = Item("layer", direction, seq, name, dtype, cfg=cfg)
        try:
            with input_checks(False):
                fn, stream = prepare_on_stream(item, device)
                if device.type != "cuda":
                    entry.update(method=CPU_METHOD, samples_s=cpu_samples(fn))
                else:
                    try:
                        entry.update(method=GRAPH_METHOD, samples_s=graph_samples(fn, device, calls, replays, stream))
                    except Exception as exc:  # noqa: BLE001 - not capturable: CUPTI after the graph sets
                        deferred.append((entry, item, providers.failure(exc)))
                        continue
        except Exception as exc:  # noqa: BLE001 - one set failing must not lose the others
            entry.update(status="failed", reason=providers.failure(exc))
        finally:
            fn = stream = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        progress(_line(entry))
    for entry, item, why in deferred:  # the profiler slows later launches: these come last
        try:
            with input_checks(False):
                fn, _ = prepare_on_stream(item, device)
                samples = cupti_samples(fn, device)
            if not samples:
                raise RuntimeError("no kernel ran on the device")
            entry.update(method=CUPTI_METHOD, samples_s=samples, reason=f"not capturable in a CUDA graph ({why})")
        except Exception as exc:  # noqa: BLE001
            entry.update(status="failed", reason=providers.failure(exc))
        fn = None
        progress(_line(entry))
    return entries


def _line(entry: dict) -> str:
    key = set_key(entry["provider"], entry["direction"], entry["seq"])
    if entry["status"] != "ok":
        return f"{key}: {entry['status']}: {entry['reason']}"
    samples = entry["samples_s"]
    return f"{key}: {statistics.median(samples) * 1e6:.4g} us per call ({len(samples)} samples, {entry['method']})"


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.shells.kernelprobe", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--providers", default=",".join(p for p in providers.names() if providers.one_process(p)))
    parser.add_argument("--directions", default=",".join(DIRECTIONS))
    parser.add_argument("--seqs", default=None, help="token counts (default 2048,8192,32768 on a GPU, 128,512 on a CPU)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default float16 on a GPU, float32 on a CPU")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--calls", type=int, default=20, help="calls captured in one CUDA graph")
    parser.add_argument("--replays", type=int, default=25, help="graph replays, a sample each")
    parser.add_argument("--only", default=None, help="comma-separated PROVIDER/DIRECTION/SEQ sets to measure")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.update(triton_cache_env())  # the entry point chooses the process's Triton cache
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")
        names = _list(args.providers)
        for name in names:
            providers.get(name)
        directions = _list(args.directions)
        if not set(directions) <= set(DIRECTIONS):
            raise ValueError(f"--directions takes {', '.join(DIRECTIONS)}, got {args.directions!r}")
        seqs = [int(s) for s in _list(args.seqs)] if args.seqs else default_seqs(device.type)
        if any(s < 1 for s in seqs) or args.calls < 1 or args.replays < 1:
            raise ValueError("--seqs, --calls and --replays take positive whole numbers")
        dtype = DTYPES[args.dtype or ("float16" if device.type == "cuda" else "float32")]
        cfg = ModelConfig.preset(args.preset)
    except (ValueError, RuntimeError) as exc:
        print(f"kernelprobe: error: {exc}", file=sys.stderr)
        return 2
    only = set(_list(args.only)) if args.only else None
    entries = measure(device, names, directions, seqs, dtype, args.preset, args.calls, args.replays, only,
                      progress=lambda message: print(f"  probe {message}", file=sys.stderr, flush=True))
    report = {"schema": SCHEMA, "device": device_name(device), "preset": args.preset, "d": cfg.d_model,
              "torch": torch.__version__, "triton": _triton_version(), "sets": entries}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, allow_nan=False))
    tmp.replace(args.out)
    return 0


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


if __name__ == "__main__":
    raise SystemExit(main())
