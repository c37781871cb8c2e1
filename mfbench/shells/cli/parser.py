"""The ``mfbench`` argument parser: one group of subcommands per module of commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from mfbench import __version__
from mfbench.core import providers
from mfbench.shells.cli import machine, measuring, reading, training

REFRESH_HELP = ("measure this machine's copy and matmul ceilings again instead of using the cached ones (they "
                "are measured again anyway when older than MFBENCH_CEILINGS_MAX_AGE_DAYS or from another machine)")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfbench", description=description)
    parser.add_argument("--version", action="version", version=f"mfbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_machine, _layers, _profile_and_run, _reading, _training):
        add(sub)
    return parser


def _machine(sub) -> None:
    p = sub.add_parser("info", help="print this machine's fingerprint (CPU, RAM, GPU, driver, versions)")
    p.set_defaults(func=machine.cmd_info)

    p = sub.add_parser("flops", help="paper Table 1 recomputed beside the printed figures")
    p.add_argument("--seq", type=int, default=2048, help="sequence length (default 2048, the paper's)")
    p.set_defaults(func=machine.cmd_flops)


def _layers(sub) -> None:
    for name, func, helptext in (
        ("layers", measuring.cmd_layers, "benchmark every provider on a set of Memory Layer shapes"),
        ("bench", measuring.cmd_bench, "the everyday comparison: Memory Layer providers vs the dense layer"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--cases", default=None if name == "bench" else "cpu",
                       help="case set: gpu, paper, cpu or smoke (bench: gpu on a GPU, else cpu)")
        p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
        p.add_argument("--dtype", help="float32, float16 or bfloat16 (default float16 on a GPU, float32 on the CPU)")
        p.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names()))
        p.add_argument("--weighting", default="paper", choices=("paper", "released"))
        p.add_argument("--no-check", action="store_true", help="skip the float64 correctness check")
        p.add_argument("--csv", help="also write every record to this CSV file")
        p.add_argument("--results-dir", help="result tables to append to (default: the project's results/)")
        p.add_argument("--no-save", action="store_true", help="print only; append nothing to the result tables")
        p.add_argument("--refresh-ceilings", action="store_true", help=REFRESH_HELP)
        _format_option(p, "the summary table, or the result rows of this measurement as json or csv")
        _provider_module_option(p)
        p.set_defaults(func=func)


def _profile_and_run(sub) -> None:
    p = sub.add_parser("profile", help="Nsight Compute counters (DRAM, L2, L1, throughput, occupancy) of each "
                       "provider's call at a set of Memory Layer shapes, as rows")
    p.add_argument("--cases", default="gpu", help="case set: gpu, paper, cpu or smoke (default gpu)")
    p.add_argument("--dtype", default="float16", help="float32, float16 or bfloat16 (default float16)")
    p.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names()))
    p.add_argument("--replay", default="range",
                   help="range: ncu replays each call whole, caches flushed once before it (default); kernel: "
                        "kernel by kernel, caches flushed before each, minutes a case for a call of hundreds")
    p.add_argument("--results-dir", help="result tables to append to (default: the project's results/)")
    _provider_module_option(p)
    p.set_defaults(func=measuring.cmd_profile)

    p = sub.add_parser("run", help="measure a matrix (layer/block/model x provider x seq) into the result tables")
    p.add_argument("--preset", default="default", help="smoke, default or paper (default: default)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names()))
    p.add_argument("--seq", help="sequence lengths, e.g. 512,2048 (default: the preset's for this device)")
    p.add_argument("--benchmarks", help="subset of layer,block,model")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default float16 on a GPU, float32 on the CPU)")
    p.add_argument("--weighting", default="paper", choices=("paper", "released"))
    p.add_argument("--results-dir", help="directory of the result tables (default: the project's results/)")
    p.add_argument("--refresh-ceilings", action="store_true", help=REFRESH_HELP)
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: each rank measures a share of the matrix on its own device; rank 0 writes one run")
    p.add_argument("--lock-clocks", type=int, metavar="MHZ",
                   help="fix the GPU's SM clock at MHZ for the run where NVML permits it (root), restored after; "
                        "the rows say so")
    p.add_argument("--schedule", default="dynamic", choices=("dynamic", "static"),
                   help="distributed: take items from a shared counter as ranks free up (dynamic), or split by "
                        "estimated cost up front (static)")
    _wide_option(p)
    _provider_module_option(p)
    p.set_defaults(func=measuring.cmd_run)


def _reading(sub) -> None:
    p = sub.add_parser("show", help="list runs, or summarise one (RUN: any unique part of its id, or 'latest')")
    p.add_argument("run", nargs="?")
    p.add_argument("--results-dir")
    p.add_argument("--repro", metavar="RUN", help="the command line that measures each row of RUN again")
    _format_option(p, "a table, or the rows (the run list without RUN) as json or csv")
    _wide_option(p)
    _provider_module_option(p)  # --repro names the file or module a provider came from
    p.set_defaults(func=reading.cmd_show)

    p = sub.add_parser("compare", help="ratios of a metric (default: time) between two runs, with their spread (RUN: any unique part of "
                       "its id, or 'latest')")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--metric", default="time", help="the metric to compare, judged by its direction (default time)")
    p.add_argument("--results-dir")
    _format_option(p, "a table, or one record per compared row as json or csv")
    p.set_defaults(func=reading.cmd_compare)


def _training(sub) -> None:
    p = sub.add_parser("train", help="train MemoryFormer and the dense baseline on a synthetic task into snapshots")
    p.add_argument("--preset", default="micro", help="micro (CPU, minutes) or tiny (one GPU) (default: micro)")
    p.add_argument("--task", default="mqar", help="mqar or induction (default: mqar)")
    p.add_argument("--arch", default="both", choices=("both", "memoryformer", "dense"))
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--seed", type=int, help="initialisation and data seed (default 0)")
    p.add_argument("--budget-seconds", metavar="T", help="train each architecture and seed until T seconds of "
                   "training are spent (the device's wall time, a GPU synchronised), evaluated at 1/8, 1/4, 1/2 "
                   "and all of it, evaluation outside the budget; rows, no snapshots")
    p.add_argument("--budget-joules", metavar="J", help="the same, to J joules net of the device's idle draw "
                   "(NVML on an NVIDIA GPU, RAPL on a CPU where it can be read)")
    p.add_argument("--seeds", help="budget runs: the seeds, e.g. 0,1,2 (the default)")
    p.add_argument("--note", help="budget runs: a remark every row carries in its flags (e.g. that the machine was shared)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--provider", help="how MemoryFormer's layers compute while training (default: triton on a "
                   "GPU, embedding_bag on the CPU)")
    p.add_argument("--results-dir", help="result tables to append to (default: the project's results/)")
    p.add_argument("--snapshots-dir", type=Path, help="where snapshots go (default: results/snapshots)")
    p.add_argument("--no-save", action="store_true", help="train and print only")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: DistributedDataParallel, the same global batch split over the ranks")
    p.set_defaults(func=training.cmd_train)

    p = sub.add_parser("snapshot", help="list snapshots, or re-evaluate one through every provider")
    ssub = p.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND", required=True)
    q = ssub.add_parser("list", help="the stored snapshots")
    q.add_argument("--snapshots-dir", type=Path)
    q.set_defaults(func=training.cmd_snapshot)
    q = ssub.add_parser("eval", help="accuracy through every provider; exit 1 if one disagrees with reference")
    q.add_argument("id", nargs="?", default="latest", help="snapshot id or prefix (default: the newest MemoryFormer)")
    q.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names(exact_only=True)))
    q.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    q.add_argument("--sequences", type=int, help="evaluation sequences (default: the snapshot's)")
    q.add_argument("--tolerance", type=float, default=None, help="allowed accuracy difference from reference")
    q.add_argument("--choice", help="also score multiple-choice tasks: piqa, arc_easy, arc_challenge, winogrande, generic")
    q.add_argument("--data", help="directory (or file) holding the multiple-choice JSONL")
    q.add_argument("--limit", type=int, help="score only the first N questions")
    q.add_argument("--snapshots-dir", type=Path)
    q.add_argument("--results-dir")
    q.add_argument("--no-save", action="store_true")
    _provider_module_option(q)
    q.set_defaults(func=training.cmd_snapshot)


def _format_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--format", default="table", choices=("table", "json", "csv"),
                   help=f"{what} (json: the schema in mfbench/store/results.schema.json)")


def _provider_module_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider-module", action="append", metavar="FILE_OR_MODULE", default=[],
                   help="a .py file or module that registers providers (mfbench.register_provider); repeatable. "
                        f"Installed packages are found through the {providers.ENTRY_POINT_GROUP} entry points, and "
                        f"{providers.MODULES_ENV} names modules for every process")


def _wide_option(p) -> None:
    p.add_argument("--wide", action="store_true",
                   help="every flag in full in its cell, and a bench run's asv values listed (default: long flags as "
                        "numbered notes under the table, asv values counted, to fit 120 columns)")
