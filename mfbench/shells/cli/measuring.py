"""The measuring commands: ``run`` (a matrix of layers, blocks and models), ``layers`` and ``bench`` (its
preset of layer-kernel items, float64-checked), and ``profile`` (Nsight Compute counters)."""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from mfbench.bench import cases, session
from mfbench.core import providers, signals
from mfbench.instruments.counters import REPLAY
from mfbench.report.summaries import layers_summary, run_summary
from mfbench.shells.cli import common
from mfbench.shells.cli.common import UsageError
from mfbench.store import documents, results


def exit_code(got: session.Collected) -> int:
    if got.stopped_by:
        return 128 + got.stopped_by
    return common.failed_exit([r["provider"] for r in got.rows if r["metric"] == "failed"])


def cmd_layers(args: argparse.Namespace) -> int:
    """Every provider's own call at a set of Memory Layer shapes, checked against float64 first: the
    layer-kernel preset of the run pipeline, summarised against each item's floor."""
    if args.cases not in cases.CASES:
        raise UsageError(f"unknown case set {args.cases!r}; choose one of {', '.join(cases.CASES)}")
    dev = common.device(args.device or common.default_device())
    items = cases.kernel_plan(cases.with_weighting(cases.CASES[args.cases], args.weighting),
                              common.provider_list(args.providers, providers.names()), common.dtype(args.dtype, dev))
    directory = None if args.no_save else (args.results_dir or results.project_dir())
    got, records = session.kernels(items, dev, common.say(args), directory=directory, csv=args.csv,
                                   check=not args.no_check, refresh_ceilings=args.refresh_ceilings)
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
    device = args.device or common.default_device()  # under torchrun: each rank's own GPU, or the CPU
    device = device if args.distributed else str(common.device(device))
    dtype = common.dtype(args.dtype, torch.device("cpu" if device == "cpu" else "cuda"))
    plan = session.RunPlan(args.preset, device, common.provider_list(args.providers, providers.names()),
                           common.int_list(args.seq, "--seq"), dtype, _benchmarks(args), args.weighting,
                           args.results_dir or results.project_dir(), args.refresh_ceilings, args.distributed,
                           args.schedule, args.lock_clocks)
    got = session.run(plan)
    if got is None:  # another rank's: rank 0 wrote the run
        return 0
    signals.say(run_summary(pd.DataFrame(got.rows), wide=args.wide))
    return exit_code(got)


def _benchmarks(args: argparse.Namespace) -> list[str] | None:
    chosen = common.names_once(args.benchmarks, "--benchmarks", "benchmark") if args.benchmarks is not None else None
    for b in chosen or []:
        if b not in cases.BENCHMARKS:
            raise UsageError(f"unknown benchmark {b!r}; choose from {', '.join(cases.BENCHMARKS)}")
    offered = {b for b, _ in cases.PRESETS[args.preset].items}
    offered |= {b.removeprefix("decode-") for b in offered}
    if chosen and not offered & set(chosen):
        raise UsageError(f"preset {args.preset} has no {', '.join(chosen)} items; it offers {', '.join(sorted(offered))}")
    return chosen


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
