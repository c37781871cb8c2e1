"""The kernel probe: samples of the kernels' own time for Memory Layer calls, every set in one process,
written as JSON. The kernel alert (``mfbench.shells.alert``) runs it once per commit and round, in that commit's
checkout, so each commit measures its own kernels.

    python -m mfbench.shells.kernelprobe --providers triton --seqs 1@2048,8@2048,2048,8192 --counts --out probe.json

A set is PROVIDER/DIRECTION/TOKENS at the preset's width, or PROVIDER/forward/TOKENS@WIDTH, a decode set:
TOKENS per call (one per sequence) through a Memory Layer of d = h = WIDTH.

On a GPU each set's call is captured ``--calls`` times in one CUDA graph and the graph is replayed
``--replays`` times, one sample per replay (``timing.graph_samples``): the host's speed stays out of the
figure. A call that cannot be captured is timed by its CUPTI busy time instead, after every graph set
(``timing.cupti_samples``), and its entry says so. On the CPU a sample is one call's process CPU time.
On a GPU each set also gets samples of the eager call (``percall.eager_samples``, host included); with
``--counts``, after every time measurement, its per-call counts (``percall.call_counts``: kernels,
syncs, bytes allocated, torch ops; only ops on a CPU), or the reason they could not be taken.

A set this machine cannot run at all (the registry's static requirement: no CUDA, no Triton) is
``unavailable``; a set that raises is ``failed`` with the reason. Neither stops the other sets.
"""

from __future__ import annotations

import argparse
import contextlib
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
from mfbench.instruments.percall import call_counts, eager_samples
from mfbench.instruments.timing import CPU_METHOD, CUPTI_METHOD, GRAPH_METHOD, cpu_samples, cupti_samples, graph_samples
from mfbench.core.model import ModelConfig

SCHEMA = "mfbench-kernelprobe/2"
DIRECTIONS = ("forward", "backward")
DECODE_WIDTH = 2048  # d = h of the default decode sets: a decode-typical width (issue 27)


def set_key(provider: str, direction: str, seq: int, width: int | None = None) -> str:
    """How a set is named on the command line (``--only``) and in reports: PROVIDER/DIRECTION/TOKENS, and
    @WIDTH for a decode set at d = h = WIDTH."""
    return f"{provider}/{direction}/{seq}" + (f"@{width}" if width else "")


def parse_key(key: str) -> tuple[str, str, int, int | None]:
    provider, direction, spec = key.split("/")
    ((seq, width),) = parse_sets(spec)
    return provider, direction, seq, width


def parse_sets(text: str) -> list[tuple[int, int | None]]:
    """(tokens, width) of each comma-separated TOKENS (at the preset's width) or TOKENS@WIDTH (a decode set:
    forward only, d = h = WIDTH). Raises ValueError with a one-line message."""
    sets = []
    for part in _list(text):
        tokens, _, width = part.partition("@")
        try:
            pair = int(tokens), (int(width) if width else None)
        except ValueError:
            raise ValueError(f"token counts are whole numbers, or TOKENS@WIDTH for a decode set; got {part!r}") from None
        if pair[0] < 1 or (pair[1] is not None and pair[1] < 1):
            raise ValueError(f"token counts and widths are positive; got {part!r}")
        sets.append(pair)
    if not sets:
        raise ValueError(f"no token counts in {text!r}")
    return sets


def default_sets(device: str) -> list[tuple[int, int | None]]:
    """The sets measured unless asked otherwise: decode at B = 1 and 8 tokens per call (forward, d = h =
    2048), then the default GPU matrix at the preset's width, or short CPU ones."""
    decode = [(1, DECODE_WIDTH), (8, DECODE_WIDTH)]
    return decode + ([(2048, None), (8192, None), (32768, None)] if device.startswith("cuda") else [(128, None), (512, None)])


def wanted_sets(names: list[str], directions: list[str], sets: list[tuple[int, int | None]]) -> list[str]:
    """The keys of every set measured, in order: a decode set (with a width) runs forward only."""
    return [set_key(p, d, s, w) for d in directions for s, w in sets for p in names if not (w and d != "forward")]


def measure(device: torch.device, names: list[str], directions: list[str], sets: list[tuple[int, int | None]],
            dtype: torch.dtype, preset: str, calls: int = 20, replays: int = 25, only: set[str] | None = None,
            counts: bool = False, progress: Callable[[str], None] = lambda message: None) -> list[dict]:
    """One entry per set: status, reason, method, per-call samples in seconds of the kernels' own time and
    of the eager call (GPU), and with ``counts`` the per-call counts (``percall.call_counts``)."""
    entries, deferred, items = [], [], {}
    for key in wanted_sets(names, directions, sets):
        if only is not None and key not in only:
            continue
        name, direction, seq, width = parse_key(key)
        cfg = ModelConfig.preset(preset, **({"d_model": width} if width else {}))
        entry = {"provider": name, "direction": direction, "seq": seq, "width": width, "d": cfg.d_model,
                 "dtype": str(dtype).removeprefix("torch."), "status": "ok", "reason": "", "method": "",
                 "samples_s": [], "eager_s": [], "counts": None, "counts_reason": ""}
        entries.append(entry)
        reason = providers.requirement_unmet(name, str(device), dtype)
        if reason:
            entry.update(status="unavailable", reason=reason)
            progress(f"{key}: unavailable: {reason}")
            continue
        item = items[key] = Item("layer", direction, seq, name, dtype, cfg=cfg)
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
                    with torch.cuda.stream(stream):
                        entry.update(eager_s=eager_samples(fn, device))
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
                entry.update(eager_s=eager_samples(fn, device))
                samples = cupti_samples(fn, device)
            if not samples:
                raise RuntimeError("no kernel ran on the device")
            entry.update(method=CUPTI_METHOD, samples_s=samples, reason=f"not capturable in a CUDA graph ({why})")
        except Exception as exc:  # noqa: BLE001
            entry.update(status="failed", reason=providers.failure(exc))
        fn = None
        progress(_line(entry))
    for entry in entries if counts else []:  # after every time measurement: the profiler's after-effect
        if entry["status"] == "ok":
            _count(entry, items[set_key(entry["provider"], entry["direction"], entry["seq"], entry["width"])], device)
    return entries


def _count(entry: dict, item: Item, device: torch.device) -> None:
    try:
        with input_checks(False):
            fn, stream = prepare_on_stream(item, device)
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                entry["counts"] = call_counts(fn, device)
    except Exception as exc:  # noqa: BLE001 - the alert fails the set closed where a GPU count is missing
        entry["counts_reason"] = providers.failure(exc)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _line(entry: dict) -> str:
    key = set_key(entry["provider"], entry["direction"], entry["seq"], entry["width"])
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
    parser.add_argument("--seqs", default=None, help="token counts, TOKENS@WIDTH for a decode set (default "
                        "1@2048,8@2048 and 2048,8192,32768 on a GPU, 128,512 on a CPU)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default float16 on a GPU, float32 on a CPU")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--calls", type=int, default=20, help="calls captured in one CUDA graph")
    parser.add_argument("--replays", type=int, default=25, help="graph replays, a sample each")
    parser.add_argument("--only", default=None, help="comma-separated PROVIDER/DIRECTION/SEQ sets to measure")
    parser.add_argument("--counts", action="store_true", help="also count kernels, syncs, bytes and ops per call")
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
        sets = parse_sets(args.seqs) if args.seqs else default_sets(device.type)
        if args.calls < 1 or args.replays < 1:
            raise ValueError("--calls and --replays take positive whole numbers")
        dtype = DTYPES[args.dtype or ("float16" if device.type == "cuda" else "float32")]
        cfg = ModelConfig.preset(args.preset)
        for width in {w for _, w in sets if w}:
            ModelConfig.preset(args.preset, d_model=width)
    except (ValueError, RuntimeError) as exc:
        print(f"kernelprobe: error: {exc}", file=sys.stderr)
        return 2
    only = set(_list(args.only)) if args.only else None
    entries = measure(device, names, directions, sets, dtype, args.preset, args.calls, args.replays, only,
                      args.counts, progress=lambda message: print(f"  probe {message}", file=sys.stderr, flush=True))
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
