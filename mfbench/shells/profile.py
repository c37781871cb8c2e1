"""``mfbench profile``: Nsight Compute's counters for each provider's call at the layer cases, as rows.

For every (case, provider) it runs ``python -m mfbench.shells.profile target ...`` under ncu: the target builds
the layer and its input, makes three warm-up calls (compilation, autotuning, allocation) and profiles
exactly one call. By default ncu replays that whole call per counter pass (``--replay range``), and a
second run of the target without ncu counts the call's kernel launches through CUPTI; ``--replay kernel``
replays and sums kernel by kernel (``instruments.counters``). The counters land as rows beside the modelled
bytes: ``measured_dram_bytes`` next to the bytes the floor model assumes, ``measured_l2_bytes`` for the
gather traffic that stays on chip. Where ncu is missing, not permitted or fails, the rows say
``unavailable: REASON`` instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import replace
from typing import Callable, Iterator

import torch

from mfbench.config import triton_cache_env
from mfbench.core import providers
from mfbench.bench.cases import CASES, DTYPES, Case, Item
from mfbench.bench.subject import prepare
from mfbench.instruments.counters import CallCounters, CounterError, aggregate, ncu_command, ncu_path, parse
from mfbench.instruments.timing import device_activity
from mfbench.cost.traffic import layer_traffic

WARMUP_CALLS = 3
METHODS = {  # the flag on a counter row, by replay mode
    "kernel": "ncu --clock-control none, one call after 3 warm-ups",
    "range": "ncu --replay-mode range --clock-control none, one call after 3 warm-ups, replayed whole",
}
COUNT_PREFIX = "kernel launches per call: "
ROWS = (  # CallCounters field -> (metric, unit)
    ("dram_bytes", "measured_dram_bytes", "B"), ("dram_read_bytes", "measured_dram_read_bytes", "B"),
    ("dram_write_bytes", "measured_dram_write_bytes", "B"), ("l2_bytes", "measured_l2_bytes", "B"),
    ("l1_hit_rate", "measured_l1_hit_rate", "%"), ("sm_throughput", "measured_sm_throughput", "%"),
    ("memory_throughput", "measured_memory_throughput", "%"), ("occupancy", "measured_occupancy", "%"),
    ("kernels", "measured_kernels", "count"),
)
# The time ncu's percentages are over: under kernel replay the call's kernels' summed durations, under range
# replay the call's elapsed time on the GPU, the gaps between its kernels included.
DURATION = {"kernel": "measured_kernel_time", "range": "measured_call_time"}


def target(case: Case, provider: str, dtype: torch.dtype, count: bool = False) -> None:
    """Build, warm up, and run one call between cudaProfilerStart and cudaProfilerStop; with ``count``,
    print how many kernels one call launches instead."""
    fn = prepare(Item.kernel(case, provider, dtype), torch.device("cuda"))
    for _ in range(WARMUP_CALLS):
        fn()
    torch.cuda.synchronize()
    if count:
        activity = device_activity(fn, "cuda", calls=1)
        print(f"{COUNT_PREFIX}{activity.kernels if activity else 0:g}", flush=True)
        return
    torch.cuda.cudart().cudaProfilerStart()
    fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def profile_one(cases: str, index: int, provider: str, dtype: str, replay: str = "range",
                timeout_s: float = 900) -> CallCounters | str:
    """The counters of one case's call through ``provider``, or why there are none."""
    ncu = ncu_path()
    if ncu is None:
        return "ncu (Nsight Compute) is not on PATH"
    target_cmd = [sys.executable, "-m", "mfbench.shells.profile", "target", "--cases", cases, "--index", str(index),
                  "--provider", provider, "--dtype", dtype]
    try:
        out = subprocess.run(ncu_command(target_cmd, ncu, replay), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"ncu ran past {timeout_s:g} s"
    try:
        found = aggregate(parse(out.stdout))
    except CounterError as exc:
        tail = (out.stderr.strip().splitlines() or [""])[-1]
        return f"ncu exit {out.returncode}: {exc}" + (f" ({tail})" if tail and out.returncode else "")
    return replace(found, kernels=count_launches(target_cmd, timeout_s)) if replay == "range" else found


def count_launches(target_cmd: list[str], timeout_s: float) -> float:
    """The call's kernel launches, from the target run again without ncu; NaN where it says none, with
    the reason on stderr."""
    try:
        out = subprocess.run([*target_cmd, "--count"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        why = f"it ran past {timeout_s:g} s"
    else:
        said = [line[len(COUNT_PREFIX):] for line in out.stdout.splitlines() if line.startswith(COUNT_PREFIX)]
        if said:
            return float(said[-1])
        why = f"exit {out.returncode}: " + ((out.stderr.strip().splitlines() or ["it printed no count"])[-1])
    print(f"mfbench profile: the call's kernels were not counted ({why})", file=sys.stderr, flush=True)
    return float("nan")


def case_params(case: Case, dtype: str) -> dict:
    """The params of the case's ``layer-kernel`` rows, so counters sit beside its times."""
    return Item.kernel(case, "-", DTYPES[dtype]).params()


def profile_rows(cases: str, names: list[str], dtype: str, run, progress: Callable[[str], None] = print,
                 replay: str = "range") -> list[dict]:
    return [row for batch in profile_batches(cases, names, dtype, run, progress, replay) for row in batch]


def profile_batches(cases: str, names: list[str], dtype: str, run, progress: Callable[[str], None] = print,
                    replay: str = "range") -> Iterator[list[dict]]:
    """The rows a (provider, case) at a time, in the order of ``names``, so a caller keeps each as it comes:
    under ncu one case of a slow provider can take minutes."""
    for name in names:
        for index, case in enumerate(CASES[cases]):
            yield _case_rows(cases, index, case, name, dtype, run, progress, replay)


def _case_rows(cases: str, index: int, case: Case, name: str, dtype: str, run,
               progress: Callable[[str], None], replay: str) -> list[dict]:
    params = case_params(case, dtype)
    found = profile_one(cases, index, name, dtype, replay)
    if isinstance(found, str):
        progress(f"  {case.name} {name}: unavailable: {found}")
        return [run.row("layer-kernel", params, name, "measured_dram_bytes", float("nan"), "B",
                        flags=[f"unavailable: {found}"])]
    elem = torch.finfo(DTYPES[dtype]).bits // 8
    modelled = layer_traffic(case.tokens, case.in_features, case.out_features, case.tau, elem, case.direction,
                             dense=providers.get(name).baseline).hbm_bytes
    progress(f"  {case.name} {name}: {found.kernels:g} kernels, DRAM {found.dram_bytes / 1e6:.1f} MB "
             f"(modelled {modelled / 1e6:.1f} MB), L2 {found.l2_bytes / 1e6:.1f} MB, L1 hit {found.l1_hit_rate:.1f}%")
    values = found.as_dict()
    uncounted = ["unavailable: the kernel count failed"] if found.kernels != found.kernels else []
    rows = [run.row("layer-kernel", params, name, metric, values[field], unit,
                    flags=[METHODS[replay], *(uncounted if field == "kernels" else [])])
            for field, metric, unit in (*ROWS, ("duration_s", DURATION[replay], "s"))]
    rows.append(run.row("layer-kernel", params, name, "modelled_dram_bytes", modelled, "B", flags=["measure.traffic"]))
    return rows


def counters_table(frame) -> str:
    """Markdown of the newest counters per case and provider in a result table (``results.load``): what
    ``results/kernels.md`` shows, so its figures are the rows'."""
    from mfbench.report.findings import case_label, shape_params

    rows = frame[(frame["benchmark"] == "layer-kernel") & frame["metric"].str.startswith(("measured_", "modelled_"))]
    rows = rows[rows["value"] == rows["value"]].copy()
    rows["params"] = rows["params"].map(shape_params)
    # Each line is one run's: never one run's bytes beside another's kernel count or replay mode.
    newest = (rows[rows["metric"] == "measured_dram_bytes"].sort_values("time_utc")
              .drop_duplicates(["params", "provider"], keep="last")[["params", "provider", "run_id", "flags"]])
    lines = ["| case | provider | replay | kernels | DRAM MB (modelled) | L2 MB | L1 hit | ncu ms | SM % | memory % | "
             "occupancy % | run |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for params, provider, run_id, flags in newest.itertuples(index=False):
        group = rows[(rows["params"] == params) & (rows["provider"] == provider) & (rows["run_id"] == run_id)]
        v = dict(zip(group["metric"], group["value"]))
        nan = float("nan")
        case = case_label(params)
        replay = "range" if "--replay-mode range" in flags else "kernel"  # ncu's default mode is kernel
        lines.append(f"| {case} | {provider} | {replay} | {v.get('measured_kernels', nan):.0f} | "
                     f"{v['measured_dram_bytes'] / 1e6:.1f} ({v.get('modelled_dram_bytes', nan) / 1e6:.1f}) | "
                     f"{v['measured_l2_bytes'] / 1e6:.0f} | {v['measured_l1_hit_rate']:.1f}% | "
                     f"{v.get(DURATION[replay], nan) * 1e3:.3g} | {v['measured_sm_throughput']:.0f} | {v['measured_memory_throughput']:.0f} | "
                     f"{v['measured_occupancy']:.0f} | {run_id} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``target``: the profiled call, started by ``profile_one`` under ncu; ``table``: the counters in the
    result tables as markdown."""
    os.environ.update(triton_cache_env())  # the entry point chooses the process's Triton cache
    parser = argparse.ArgumentParser(prog="python -m mfbench.shells.profile")
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table")
    table.add_argument("--results-dir", default=None)
    t = sub.add_parser("target")
    t.add_argument("--cases", choices=sorted(CASES), required=True)
    t.add_argument("--index", type=int, required=True)
    t.add_argument("--provider", required=True)
    t.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    t.add_argument("--count", action="store_true", help="print the call's kernel launches instead (no ncu)")
    args = parser.parse_args(argv)
    if args.command == "table":
        from mfbench.store import results

        print(counters_table(results.load(args.results_dir or results.project_dir())), end="")
        return 0
    target(CASES[args.cases][args.index], args.provider, DTYPES[args.dtype], args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
