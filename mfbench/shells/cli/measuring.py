"""The measuring commands: ``run`` (a matrix of layers, blocks and models), ``layers`` and ``bench`` (its
preset of layer-kernel items, float64-checked), and ``profile`` (Nsight Compute counters)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd
import torch

from mfbench.bench import cases, runner
from mfbench.bench.measure import Bench
from mfbench.bench.measurement import Measurement, merge, record, to_rows
from mfbench.core import providers
from mfbench.core.model import ModelConfig
from mfbench.instruments import ceilings
from mfbench.instruments.counters import REPLAY
from mfbench.report.summaries import layers_summary, run_summary
from mfbench.shells.cli import common
from mfbench.shells.cli.common import UsageError
from mfbench.store import documents, results


@dataclass
class Collected:
    """What a measuring command kept: the measurements, their rows (the machine's first), and the signal
    that stopped it (0 where it ran to the end)."""

    measurements: list[Measurement] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    stopped_by: int = 0


def collect(items, bench: Bench, run: results.Run, progress: Callable[[str], None], lock=None, tag: str = "") -> Collected:
    """Run the matrix, keeping each measurement's rows as it comes; Ctrl-C or SIGTERM keeps what was measured,
    flagged partial."""
    got = Collected(rows=bench.machine_rows(run))
    try:
        with lock.held() if lock else contextlib.nullcontext():
            for m in runner.run_matrix(items, bench, progress):
                got.measurements.append(m)
                got.rows += to_rows(m, run)
    except KeyboardInterrupt as exc:
        got.stopped_by = common.stopped(exc)
        name = signal.Signals(got.stopped_by).name
        results.mark_partial(got.rows, f"interrupted:{name}")
        print(f"{tag}interrupted by {name}: keeping the {len(got.rows)} rows measured so far, flagged "
              f"{results.PARTIAL}", file=sys.stderr)
    return got


def exit_code(got: Collected) -> int:
    if got.stopped_by:
        return 128 + got.stopped_by
    return common.failed_exit([r["provider"] for r in got.rows if r["metric"] == "failed"])


def measured_ceilings(dev: torch.device, refresh: bool, say: Callable[[str], None]):
    say(f"measuring the ceilings of {dev} (cached after the first run) ...")
    ceil = ceilings.ceilings(dev, refresh=refresh)
    onchip = f"{ceil.onchip_bytes_per_s / 1e12:.1f} TB/s" if ceil.onchip_bytes_per_s else "n/a"
    say(f"ceilings: copy {ceil.copy_bytes_per_s / 1e9:.1f} GB/s, matmul "
        f"{ceil.matmul_flops_per_s / 1e12:.1f} TFLOP/s ({ceil.matmul_dtype}), on-chip {onchip}")
    return ceil


def cmd_layers(args: argparse.Namespace) -> int:
    """Every provider's own call at a set of Memory Layer shapes, checked against float64 first: the
    layer-kernel preset of the run pipeline, summarised against each item's floor."""
    if args.cases not in cases.CASES:
        raise UsageError(f"unknown case set {args.cases!r}; choose one of {', '.join(cases.CASES)}")
    dev = common.device(args.device or common.default_device())
    items = cases.kernel_plan(cases.with_weighting(cases.CASES[args.cases], args.weighting),
                              common.provider_list(args.providers, providers.names()), common.dtype(args.dtype, dev))
    if not args.no_save:
        args.results_dir = args.results_dir or results.project_dir()
        common.ready_to_write(args.results_dir)
    say = common.say(args)
    bench = Bench(dev, measured_ceilings(dev, args.refresh_ceilings, say), energy_seconds=0.0, check=not args.no_check)
    got = collect(items, bench, results.Run.start(str(dev)), say)
    records = pd.DataFrame([record(m) for m in merge(got.measurements)])
    if args.csv:
        records.to_csv(args.csv, index=False)
        say(f"wrote {len(records)} records to {args.csv}")
    if not args.no_save and got.rows:
        say(f"wrote {len(got.rows)} rows to {common.append(got.rows, args.results_dir)}")
    if args.format == "table":
        print(layers_summary(records))
    else:
        documents.write("rows", pd.DataFrame(got.rows, columns=results.COLUMNS), args.format)
    return exit_code(got)


def cmd_bench(args: argparse.Namespace) -> int:
    """The small everyday comparison: reference Memory Layer and friends vs the dense layer."""
    args.cases = args.cases or ("gpu" if (args.device or common.default_device()).startswith("cuda") else "cpu")
    return cmd_layers(args)


def cmd_run(args: argparse.Namespace) -> int:
    if args.preset not in cases.PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(cases.PRESETS)}")
    preset = cases.PRESETS[args.preset]
    dev, rank, world = common.start_ranks(args)
    items = cases.plan(preset, dev, common.provider_list(args.providers, providers.names()),
                       common.int_list(args.seq, "--seq"), common.dtype(args.dtype, dev), _benchmarks(args), args.weighting)
    directory = args.results_dir or results.project_dir()
    if rank == 0:
        common.ready_to_write(directory)
        _warn_long(preset, items, dev)
    share = _share(args, items, dev)
    run, items, tag = (share.run, share.items, share.tag) if share else (results.Run.start(str(dev)), items, "")
    count = len(items) if isinstance(items, list) else "its share of the"
    print(f"{tag}run {run.run_id} on {run.device}, commit {run.commit[:10]}{'+dirty' if run.dirty else ''}: "
          f"{count} measurements, preset {args.preset} (model config {preset.model}, "
          f"d={ModelConfig.preset(preset.model).d_model}), {str(common.dtype(args.dtype, dev)).removeprefix('torch.')}",
          flush=True)
    lock = _clock_lock(args, dev)
    bench = Bench.start(dev, ceilings.ceilings(dev, refresh=args.refresh_ceilings), preset.energy_seconds)
    if share:
        share.begin(dev)
    got = collect(items, bench, run, lambda msg: print(tag + msg, flush=True), lock, tag)
    if lock:
        _lock_flags(got.rows, lock, args, tag)
    if share:
        got.rows = share.finish(got.rows)
        if got.rows is None:  # this rank's rows went to rank 0, which writes the run
            return 0
    path = common.append(got.rows, directory)
    print(f"wrote {len(got.rows)} rows to {path} (run {run.run_id}{f', {world} ranks' if world > 1 else ''}"
          f"{', partial' if got.stopped_by else ''})")
    print(run_summary(pd.DataFrame(got.rows), wide=args.wide))
    return exit_code(got)


def _benchmarks(args: argparse.Namespace) -> list[str] | None:
    chosen = [b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None
    for b in chosen or []:
        if b not in cases.BENCHMARKS:
            raise UsageError(f"unknown benchmark {b!r}; choose from {', '.join(cases.BENCHMARKS)}")
    return chosen


def _share(args: argparse.Namespace, items: list, dev: torch.device):
    """This rank's share of a --distributed run (one rank too: the same matrix and rows as any world size)."""
    if not args.distributed:
        return None
    from mfbench.shells import distributed

    return distributed.Share.start(items, dev, args.schedule)


def _clock_lock(args: argparse.Namespace, dev: torch.device):
    """``--lock-clocks MHZ``: a ClockLock for the run (None without the option)."""
    if not args.lock_clocks:
        return None
    if dev.type != "cuda":
        raise UsageError("--lock-clocks fixes a GPU's SM clock: this run is on the CPU")
    if args.lock_clocks < 1:
        raise UsageError(f"--lock-clocks takes a clock in MHz, got {args.lock_clocks}")
    from mfbench.instruments.gpustate import ClockLock

    return ClockLock(dev, args.lock_clocks)


def _lock_flags(rows: list[dict], lock, args: argparse.Namespace, tag: str) -> None:
    results.add_flags(rows, lock.flag)
    if lock.refused:
        print(f"{tag}--lock-clocks {args.lock_clocks}: not permitted here ({lock.refused}); measured at the "
              "GPU's own clocks, rows flagged clock-lock-refused", file=sys.stderr)


def _warn_long(preset: cases.Preset, items: list, dev: torch.device) -> None:
    """Before a matrix with lengths beyond the preset's own for this device: how much longer it is, and an
    estimate of its cost relative to the preset's matrix (cost_estimate grows linearly with the length;
    attention grows quadratically, so this is a lower bound)."""
    usual = preset.seqs["cuda" if dev.type == "cuda" else "cpu"]
    longest = max((item.seq for item in items), default=0)
    if longest <= max(usual):
        return
    own = [replace(item, seq=s) for item in dict.fromkeys(replace(i, seq=0) for i in items) for s in usual]
    cost = sum(cases.cost_estimate(item, dev) for item in items)
    base = sum(cases.cost_estimate(item, dev) for item in own) or 1.0
    print(f"warning: --seq {longest} is {longest / max(usual):.0f}x the longest length this preset measures on "
          f"{dev.type} ({max(usual)}); the matrix is estimated at {cost / base:.0f}x or more of the preset's own "
          "time, and a single item may run for minutes without output (Ctrl-C keeps the rows measured so far)",
          file=sys.stderr, flush=True)


def cmd_profile(args: argparse.Namespace) -> int:
    from mfbench.shells.profile import profile_batches

    if args.cases not in cases.CASES:
        raise UsageError(f"unknown case set {args.cases!r}; choose one of {', '.join(cases.CASES)}")
    if args.dtype not in cases.DTYPES:
        raise UsageError(f"unknown dtype {args.dtype!r}; choose one of {', '.join(cases.DTYPES)}")
    if args.replay not in REPLAY:
        raise UsageError(f"unknown replay mode {args.replay!r}; choose one of {', '.join(REPLAY)}")
    if not torch.cuda.is_available():
        raise UsageError("mfbench profile reads a GPU's hardware counters: no CUDA device is visible to torch")
    names = common.provider_list(args.providers, [p for p in providers.names() if providers.one_process(p)])
    args.results_dir = args.results_dir or results.project_dir()
    common.ready_to_write(args.results_dir)
    print(f"profiling {len(cases.CASES[args.cases])} cases x {len(names)} providers under Nsight Compute "
          f"({args.replay} replay) ...", flush=True)
    run = results.Run.start("cuda")
    for rows in profile_batches(args.cases, names, args.dtype, run, lambda m: print(m, flush=True), args.replay):
        path = common.append(rows, args.results_dir)  # a case at a time: a run cut short keeps what it profiled
        print(f"  wrote {len(rows)} rows to {path}", flush=True)
    return 0
