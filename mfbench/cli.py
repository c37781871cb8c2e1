"""The ``mfbench`` command line. User mistakes end in a one-line message and exit code 2, never a traceback.

Exit codes: 0 done; 1 a regression, or a measurement or check that failed; 2 a usage or environment problem
(bad arguments, a results table that cannot be read or written), found before anything is measured where it
can be; 128 + the signal's number for a run stopped by SIGINT (130) or SIGTERM (143), whose rows measured so
far are kept and flagged ``partial-run``; 141 when the reader of the output went away (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Sequence

import pandas as pd
import torch

import mfbench
from mfbench import __version__, providers


class UsageError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but torch sees no CUDA device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {text!r}; use cpu, cuda or cuda:N")
    return device


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _provider_list(text: str | None, default: list[str]) -> list[str]:
    if not text:
        return default
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    for name in chosen:
        try:
            providers.get(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return chosen


def _ready_to_write(directory) -> None:
    """Refuse, before anything is measured, a result table that cannot be read or a directory that cannot
    take a write (read-only, a file, under a file)."""
    from mfbench import results

    try:
        results.check_writable(directory)
        results.load(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def _append(rows: list[dict], directory):
    """results.append, and where the write fails after measuring (a full disk): the table is left as it
    was, and the rows go to a file of their own, named in the one-line error with how to append it later."""
    import tempfile
    from pathlib import Path

    from mfbench import results

    try:
        return results.append(rows, directory)
    except results.ResultsError as exc:
        rescue = Path(tempfile.gettempdir()) / f"mfbench-unsaved-{rows[0]['run_id'] if rows else 'rows'}.csv"
        try:
            pd.DataFrame(rows).to_csv(rescue, index=False)
        except OSError as again:
            raise UsageError(f"{exc}; the {len(rows)} rows measured could not be saved elsewhere either "
                             f"({again.strerror})") from None
        raise UsageError(f"{exc}; the {len(rows)} rows measured are in {rescue}: append them with "
                         f"python -c \"from mfbench import results; results.append(results.load('{rescue}'), "
                         f"'{directory}')\"") from None


def _print_frame(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        print(frame.to_string(index=False))


# --- commands ----------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from mfbench.measure.fingerprint import fingerprint, git_commit

    info = fingerprint(_default_device())
    commit, dirty = git_commit()
    info.update(commit=commit + ("+dirty" if dirty else ""))
    if info["gpu"] is None:
        info["gpu"] = "none visible to torch"
    for key, value in info.items():
        print(f"{key:>15}: {value if value is not None else '-'}")
    print(f"{'providers':>15}: " + ", ".join(providers.names()))
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from mfbench import flops

    table = flops.table1(args.seq)
    shown = pd.DataFrame({
        "model": table["model"],
        "d": table["d"],
        "K": table["K"].astype("string").fillna("-"),
        "w/o attn (G)": (table["flops_wo_attn"] / 1e9).round(2),
        "paper w/o attn": table["paper_flops_wo_attn"] / 1e9,
        "total (G)": (table["flops_total"] / 1e9).round(2),
        "paper total": table["paper_flops_total"] / 1e9,
        "exact total (G)": (table["flops_total_exact"] / 1e9).round(2),
        "agrees": table["agrees_with_print"].map({True: "yes", False: "NO"}),
    })
    print(f"Per block, s={args.seq}, paper convention ({flops.CONVENTIONS['paper']}).")
    if args.seq != 2048:
        print("The paper's printed figures are for s=2048; the 'agrees' column compares against them.")
    _print_frame(shown)
    for row in table[~table["agrees_with_print"]].itertuples():
        print(f"note: {row.model}: {row.note} (formula {row.flops_wo_attn / 1e9:.3f}G w/o attn, "
              f"printed {row.paper_flops_wo_attn / 1e9:.1f}G)")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from mfbench import results
    from mfbench.layerbench import CASES, DTYPES, run_cases, with_weighting
    from mfbench.measure.ceilings import ceilings

    device = _device(args.device or _default_device())
    if args.cases not in CASES:
        raise UsageError(f"unknown case set {args.cases!r}; choose one of {', '.join(CASES)}")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    names = _provider_list(args.providers, providers.names())
    if not args.no_save:
        args.results_dir = args.results_dir or results.project_dir()
        _ready_to_write(args.results_dir)
    say = _say(args)
    say(f"measuring the ceilings of {device} (cached after the first run) ...")
    ceil = ceilings(device, refresh=args.refresh_ceilings)
    onchip = f"{ceil.onchip_bytes_per_s / 1e12:.1f} TB/s" if ceil.onchip_bytes_per_s else "n/a"
    say(f"ceilings: copy {ceil.copy_bytes_per_s / 1e9:.1f} GB/s, matmul "
        f"{ceil.matmul_flops_per_s / 1e12:.1f} TFLOP/s ({ceil.matmul_dtype}), on-chip {onchip}")
    cases = with_weighting(CASES[args.cases], args.weighting)
    records, stopped_by = [], 0
    try:
        for record in run_cases(cases, names, device, DTYPES[args.dtype], ceil, check=not args.no_check, progress=say):
            records.append(record)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep what was measured, flagged partial
        stopped_by = _stopped(exc)
        say(f"interrupted by {signal.Signals(stopped_by).name}: keeping the {len(records)} records measured so far, "
            f"flagged {results.PARTIAL}")
    frame = pd.DataFrame(records)
    if args.csv:
        frame.to_csv(args.csv, index=False)
        say(f"wrote {len(frame)} records to {args.csv}")
    rows = layer_rows(records, results.Run.start(str(device)))
    if stopped_by:
        results.mark_partial(rows, f"interrupted:{signal.Signals(stopped_by).name}")
    if not args.no_save and rows:
        path = _append(rows, args.results_dir)
        say(f"wrote {len(rows)} rows to {path}")
    if args.format == "table":
        print(summary(frame))
    else:
        results.write("rows", pd.DataFrame(rows, columns=results.COLUMNS), args.format)
    if stopped_by:
        return 128 + stopped_by
    return _failed_exit([r["provider"] for r in records if r.get("failed")])


def _say(args: argparse.Namespace):
    """Progress: on stdout beside a table, on stderr where stdout is --format json or csv for a program."""
    stream = sys.stdout if getattr(args, "format", "table") == "table" else sys.stderr
    return lambda message: print(message, file=stream, flush=True)


def _clock_lock(args: argparse.Namespace, device: torch.device):
    """``--lock-clocks MHZ``: a ClockLock for the run (None without the option)."""
    if not args.lock_clocks:
        return None
    if device.type != "cuda":
        raise UsageError("--lock-clocks fixes a GPU's SM clock: this run is on the CPU")
    if args.lock_clocks < 1:
        raise UsageError(f"--lock-clocks takes a clock in MHz, got {args.lock_clocks}")
    from mfbench.measure.gpustate import ClockLock

    return ClockLock(device, args.lock_clocks)


def cmd_profile(args: argparse.Namespace) -> int:
    from mfbench import results
    from mfbench.layerbench import CASES, DTYPES
    from mfbench.profile import profile_batches

    if args.cases not in CASES:
        raise UsageError(f"unknown case set {args.cases!r}; choose one of {', '.join(CASES)}")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    if not torch.cuda.is_available():
        raise UsageError("mfbench profile reads a GPU's hardware counters: no CUDA device is visible to torch")
    names = _provider_list(args.providers, [p for p in providers.names() if providers.one_process(p)])
    args.results_dir = args.results_dir or results.project_dir()
    _ready_to_write(args.results_dir)
    print(f"profiling {len(CASES[args.cases])} cases x {len(names)} providers under Nsight Compute ...", flush=True)
    run = results.Run.start("cuda")
    for rows in profile_batches(args.cases, names, args.dtype, run, lambda m: print(m, flush=True)):
        path = _append(rows, args.results_dir)  # a case at a time: a run cut short keeps what it profiled
        print(f"  wrote {len(rows)} rows to {path}", flush=True)
    return 0


LAYER_METRICS = {  # record field -> (metric, unit)
    "median_s": ("time", "s"), "floor_ms": ("floor_time", "ms"), "fraction_of_floor": ("fraction_of_floor", ""),
    "hbm_gbps": ("achieved_bandwidth", "GB/s"), "rel_err_y": ("rel_error_y", ""),
    "rel_err_grad_x": ("rel_error_grad_x", ""), "rel_err_grad_tables": ("rel_error_grad_tables", ""),
}


# A time under its floor is impossible: the ceilings it was derived from are too low (measured under load,
# or on another machine). Flagged like bandwidth above the copy ceiling, in the rows and the printout.
BELOW_FLOOR = "time-below-floor"


def layer_rows(records: list[dict], run) -> list[dict]:
    """Result rows (benchmark 'layer-kernel') from ``run_cases`` records."""
    from mfbench.measure.timing import Timing, beside

    rows = []
    for rec in records:
        params = {k: rec[k] for k in ("direction", "tokens", "in_features", "out_features", "tau", "weighting", "dtype")}
        if rec.get("target_ms") is not None and rec["target_ms"] == rec["target_ms"]:
            params["target_ms"] = rec["target_ms"]
        for metric in ("skipped", "failed"):
            if rec.get(metric):
                rows.append(run.row("layer-kernel", params, rec["provider"], metric, float("nan"), "",
                                    flags=[rec[metric].replace(",", ";")]))
        if "median_s" not in rec:  # skipped, or failed before it was timed
            continue
        extra = [f"floor:{rec['floor_bound']}"]
        if rec.get("kernel_config"):
            extra.append("config " + rec["kernel_config"].replace(",", ";"))
        if rec.get("met_target") is not None:
            extra.append("target-met" if rec["met_target"] else "target-missed")
        if rec.get("host_bound"):
            extra.append("host-bound")
        if rec.get("fraction_of_floor", 0) > 1:
            extra.append(BELOW_FLOOR)
        extra += [c for c in rec.get("caveats", "").split(",") if c]
        for field, (metric, unit) in LAYER_METRICS.items():
            if field in rec and rec[field] == rec[field]:
                kw = dict(spread_low=rec["q1_s"], spread_high=rec["q3_s"], spread_kind="iqr",
                          samples=rec["samples"], flags=extra) if metric == "time" else {}
                rows.append(run.row("layer-kernel", params, rec["provider"], metric, rec[field], unit, **kw))
        for metric, value, unit, why in beside(Timing.from_dict(rec)):
            rows.append(run.row("layer-kernel", params, rec["provider"], metric, value, unit, flags=why))
    return rows


def summary(frame: pd.DataFrame) -> str:
    """One line per (case, provider): median, floor, fraction of floor, ratio to dense, target, and on a GPU
    the host's time to issue one call ("bound" where the median is the host's) and the kernels' own device
    time (see ``measure.timing``)."""
    ran = frame[frame.get("median_ms").notna()] if "median_ms" in frame else frame.iloc[0:0]
    failed = "".join(f"\nFAILED: {r.case} {r.provider}: {r.failed}" for r in frame.itertuples()
                     if isinstance(getattr(r, "failed", None), str))
    if ran.empty:
        return "no provider ran" + failed
    dense = ran[ran["provider"] == "dense"].set_index("case")["median_ms"]
    out = pd.DataFrame({
        "case": ran["case"], "provider": ran["provider"],
        "median ms": ran["median_ms"].map("{:.4g}".format),
        "IQR ms": ((ran["q3_s"] - ran["q1_s"]) * 1e3).map("{:.2g}".format),
        "floor ms": ran["floor_ms"].map("{:.3g}".format) + " " + ran["floor_bound"],
        "of floor": (100 * ran["fraction_of_floor"]).map(lambda f: f"{f:.0f}%" + (" IMPOSSIBLE" if f > 100 else "")),
        "x dense": [f"{m / dense[c]:.1f}" if c in dense.index else "-" for c, m in zip(ran["case"], ran["median_ms"])],
        "target": [("-" if pd.isna(t) or m is None or pd.isna(m) else f"{t:g} ms {'met' if m else 'MISSED'}")
                   for t, m in zip(ran["target_ms"], ran["met_target"])],
    })
    if "host_s" in ran and ran["host_s"].notna().any():  # GPU only: CPU time to issue one call
        out["host ms"] = [("-" if pd.isna(h) else f"{h * 1e3:.3g}" + (" bound" if not pd.isna(b) and b else ""))
                          for h, b in zip(ran["host_s"], ran["host_bound"])]
    if "kernel_s" in ran and ran["kernel_s"].notna().any():  # GPU only: device time of the kernels alone
        out["kernel ms"] = ran["kernel_s"].map(lambda k: "-" if pd.isna(k) else f"{k * 1e3:.3g}")
    errs = [c for c in ran.columns if c.startswith("rel_err_")]
    if errs:
        out["max rel err"] = ran[errs].max(axis=1).map(lambda v: "-" if pd.isna(v) else f"{v:.1e}")
    text = out.to_string(index=False)
    if (ran["fraction_of_floor"] > 1).any():
        text += (f"\nnote: a time below its floor ({BELOW_FLOOR}) means the ceilings are too low for this machine "
                 "now; measure them again with --refresh-ceilings on an idle machine")
    return text + failed


def cmd_bench(args: argparse.Namespace) -> int:
    """The small everyday comparison: reference Memory Layer and friends vs the dense layer."""
    args.cases = args.cases or ("gpu" if (args.device or _default_device()).startswith("cuda") else "cpu")
    return cmd_layers(args)


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"{flag} takes whole numbers, e.g. {flag} 512,2048; got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} values must be positive, got {text!r}")
    return values


def cmd_run(args: argparse.Namespace) -> int:
    from mfbench import results, runner
    from mfbench.layerbench import DTYPES
    from mfbench.measure.ceilings import ceilings
    from mfbench.model import ModelConfig

    if args.preset not in runner.PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(runner.PRESETS)}")
    device, rank, world = _start(args)
    if args.distributed:
        from mfbench import distributed
    dtype_name = args.dtype or ("float16" if device.type == "cuda" else "float32")
    if dtype_name not in DTYPES:
        raise UsageError(f"unknown dtype {dtype_name!r}; choose one of {', '.join(DTYPES)}")
    benchmarks = [b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None
    for b in benchmarks or []:
        if b not in runner.BENCHMARKS:
            raise UsageError(f"unknown benchmark {b!r}; choose from {', '.join(runner.BENCHMARKS)}")
    preset = runner.PRESETS[args.preset]
    cfg = ModelConfig.preset(preset.model, weighting=args.weighting)
    names = _provider_list(args.providers, providers.names())
    items = runner.plan(preset, device, names, _int_list(args.seq, "--seq"), DTYPES[dtype_name], benchmarks)
    directory = args.results_dir or results.project_dir()
    if rank == 0:
        _ready_to_write(directory)
    if args.seq and rank == 0:
        _warn_long(preset, items, cfg, device, names, DTYPES[dtype_name], benchmarks)
    run = results.Run.start(str(device))
    collective: list = []
    if args.distributed:  # one rank too: the same matrix and the same rows as any other world size
        run = distributed.rank_run(distributed.broadcast(run), device)
        # 'sharded' needs every rank inside each call; a sharded matrix gives each item to one rank only
        collective = [item for item in items if item.provider == "sharded"]
        items = [item for item in items if item.provider != "sharded"]
        cost = lambda item: runner.cost_estimate(item, cfg, device)  # noqa: E731
        items = (distributed.shard(items, cost, world)[rank] if args.schedule == "static"
                 else distributed.claim(items, cost, f"mfbench-items-{run.run_id}", group=lambda item: item.provider))
    tag = f"[rank {rank}/{world}] " if args.distributed else ""
    count = len(items) if isinstance(items, list) else "its share of the"
    print(f"{tag}run {run.run_id} on {run.device}, commit {run.commit[:10]}{'+dirty' if run.dirty else ''}: "
          f"{count} measurements, preset {args.preset} (model config {cfg.name}, d={cfg.d_model}), {dtype_name}",
          flush=True)
    lock = _clock_lock(args, device)
    ceil = ceilings(device, refresh=args.refresh_ceilings)
    rows = []
    stopped_by = 0
    start = time.perf_counter()
    meter = None
    if args.distributed:
        from mfbench.measure.energy import EnergyMeter

        print(f"{tag}set up in {start - mfbench.IMPORTED:.1f} s", flush=True)
        meter = EnergyMeter(device)
        meter.begin_window("shard")
    try:
        with lock.held() if lock else contextlib.nullcontext():
            for row in runner.run_matrix(items, cfg, run, device, ceil, preset.energy_seconds,
                                         progress=lambda msg: print(tag + msg, flush=True)):
                rows.append(row)
    except KeyboardInterrupt as exc:
        stopped_by = _stopped(exc)
        name = signal.Signals(stopped_by).name
        results.mark_partial(rows, f"interrupted:{name}")
        print(f"{tag}interrupted by {name}: keeping the {len(rows)} rows measured so far, flagged "
              f"{results.PARTIAL}", file=sys.stderr)
    if lock:
        results.add_flags(rows, lock.flag)
        if lock.refused:
            print(f"{tag}--lock-clocks {args.lock_clocks}: not permitted here ({lock.refused}); measured at the "
                  "GPU's own clocks, rows flagged clock-lock-refused", file=sys.stderr)
    if args.distributed:
        measured = len({(r["benchmark"], r["params"], r["provider"]) for r in rows if r["benchmark"] in runner.BENCHMARKS})
        energy = meter.end_window("shard", max(1, measured))
        rows = distributed.tag_rank(rows) + distributed.rank_rows(run, time.perf_counter() - start, energy, measured,
                                                                  setup_seconds=start - mfbench.IMPORTED)
        gathered = distributed.gather(rows)
        distributed.dist.barrier()
        if rank != 0:
            distributed.dist.destroy_process_group()
            return 0
        rows = [row for part in gathered for row in part]
        rows += distributed.derived_rows(run, rows)
        rows += [run.row(item.benchmark, item.params(cfg), item.provider, "skipped", float("nan"), "",
                         flags=["not in a sharded matrix: it needs every rank in each call (measure it in a "
                                "run of its own under torchrun)"]) for item in collective]
        distributed.dist.destroy_process_group()
    path = _append(rows, directory)
    print(f"wrote {len(rows)} rows to {path} (run {run.run_id}{f', {world} ranks' if world > 1 else ''}"
          f"{', partial' if stopped_by else ''})")
    print(run_summary(pd.DataFrame(rows)))
    if stopped_by:
        return 128 + stopped_by
    return _failed_exit([r["provider"] for r in rows if r["metric"] == "failed"])


def _failed_exit(failed: list[str]) -> int:
    """1, saying which providers failed, where any did (raised, wrong shape, dtype or values, over budget)."""
    if not failed:
        return 0
    print(f"mfbench: failed: {', '.join(dict.fromkeys(failed))} (the reasons are in their rows)", file=sys.stderr)
    return 1


def _warn_long(preset, items: list, cfg, device: torch.device, names: list[str], dtype: torch.dtype,
               benchmarks: list[str] | None) -> None:
    """Before a matrix with lengths beyond the preset's own for this device: how much longer it is, and an
    estimate of its cost relative to the preset's matrix (runner.cost_estimate grows linearly with the
    length; attention grows quadratically, so this is a lower bound)."""
    from mfbench import runner

    usual = preset.seqs["cuda" if device.type == "cuda" else "cpu"]
    longest = max(item.seq for item in items) if items else 0
    if longest <= max(usual):
        return
    own = runner.plan(preset, device, names, None, dtype, benchmarks)
    cost = sum(runner.cost_estimate(item, cfg, device) for item in items)
    base = sum(runner.cost_estimate(item, cfg, device) for item in own) or 1.0
    print(f"warning: --seq {longest} is {longest / max(usual):.0f}x the longest length this preset measures on "
          f"{device.type} ({max(usual)}); the matrix is estimated at {cost / base:.0f}x or more of the preset's own "
          "time, and a single item may run for minutes without output (Ctrl-C keeps the rows measured so far)",
          file=sys.stderr, flush=True)


def run_summary(frame: pd.DataFrame) -> str:
    """Time (and on a GPU the kernels' own device time), ratio to dense, achieved bandwidth, energy per token
    and sanity flags, one line per measurement."""
    import json

    from mfbench.measure.timing import HOST_METHOD, KERNEL_METHOD
    from mfbench.results import short_direction

    if frame.empty:  # a run interrupted before its first row
        return "no rows"
    frame = frame[~frame["benchmark"].isin(["idle", "ceiling", "distributed"])]
    if frame.empty:
        return "no rows"
    quiet = ("2-per-mac", "FlopCounterMode", "nvml-energy-counter", "nvml-power-sampling", "cuda-allocator-peak",
             HOST_METHOD, KERNEL_METHOD)
    notes: set[str] = set()
    lines = []
    groups = frame.groupby(["benchmark", "params", "provider"], sort=False)
    times = {key: g.loc[g["metric"] == "time", "value"] for key, g in groups}
    for (bench, params, provider), group in groups:
        value = dict(zip(group["metric"], group["value"]))
        p = json.loads(params)
        flags = set()
        for text in group["flags"].fillna(""):
            for flag in filter(None, str(text).split(",")):
                if flag.startswith("unavailable: ") or flag.startswith("process-peak"):
                    notes.add(flag)
                elif group["metric"].eq("skipped").all():
                    flags.add("skipped: " + flag)
                elif group["metric"].eq("failed").all():
                    flags.add("FAILED: " + flag)
                elif flag not in quiet:
                    flags.add(flag)
        t = value.get("time", float("nan"))
        dense = times.get((bench, params, "dense"))
        dense = float(dense.iloc[0]) if dense is not None and len(dense) else float("nan")
        gbps, jpt = value.get("achieved_bandwidth", float("nan")), value.get("energy_per_token", float("nan"))
        kern = value.get("kernel_time", float("nan"))
        lines.append({
            # rows of other writers (asv imports, layer-kernel) name their parameters differently
            "benchmark": bench, "dir": short_direction(p.get("direction", "-")), "seq": p.get("seq", p.get("tokens", "-")),
            "provider": provider, "median ms": "-" if t != t else f"{t * 1e3:.4g}",
            "kernel ms": "-" if kern != kern else f"{kern * 1e3:.4g}",
            "x dense": "-" if t != t or dense != dense else f"{t / dense:.2f}",
            "GB/s": "-" if gbps != gbps else f"{gbps / 1e9:.1f}",
            "uJ/token": "-" if jpt != jpt else f"{jpt * 1e6:.3g}",
            "flags": ", ".join(sorted(flags)),
        })
    table = pd.DataFrame(lines)
    if (table["kernel ms"] == "-").all():  # no GPU rows: nothing to set beside the median
        table = table.drop(columns="kernel ms")
    text = table.to_string(index=False)
    for note in sorted(notes):
        text += f"\nnote: {note}"
    return text


def _load(directory: str | None) -> pd.DataFrame:
    from mfbench import results

    try:
        return results.load(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def _pick_run(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    from mfbench import results

    listing = results.runs(frame)
    if listing.empty:
        raise UsageError("the results table has no runs yet; make one with `mfbench run`")
    if run_id == "latest":
        run_id = listing["run_id"].iloc[-1]
    ids = listing["run_id"].tolist()
    matches = [run_id] if run_id in ids else [r for r in ids if run_id in r]
    if len(matches) != 1:
        known = ", ".join(listing["run_id"].tail(5))
        raise UsageError(f"run {run_id!r} {'is ambiguous' if matches else 'not found'}; recent runs: {known}")
    return frame[frame["run_id"] == matches[0]]


def cmd_show(args: argparse.Namespace) -> int:
    from mfbench import results

    frame = _load(args.results_dir)
    if args.repro:
        return _show_repro(_pick_run(frame, args.repro), args.format)
    if args.run is None:
        listing = results.runs(frame)
        if args.format != "table":
            results.write("runs", listing.assign(partial=listing["partial"] == "partial"), args.format)
        else:
            print("no runs yet" if listing.empty else listing.to_string(index=False))
        return 0
    rows = _pick_run(frame, args.run)
    if args.format != "table":
        results.write("rows", rows, args.format)
        return 0
    first = rows.iloc[0]
    partial = results.runs(rows)["partial"].iloc[0]
    print(f"run {first['run_id']} on {first['device']} ({first['machine']}), commit {first['commit'][:10]}"
          f"{'+dirty' if first['dirty'] else ''}, {first['time_utc']}"
          + (" - PARTIAL: interrupted before the matrix was done" if partial else ""))
    print(run_summary(rows))
    return 0


def _show_repro(rows: pd.DataFrame, fmt: str) -> int:
    """``show --repro RUN``: the command line that measures each (benchmark, parameters, provider) again."""
    from mfbench import results

    first = rows.iloc[0]
    lines = []
    for (bench, params, provider), group in rows.groupby(["benchmark", "params", "provider"], sort=False):
        command, note = repro_command(bench, json.loads(params), provider, group.iloc[0]["device"])
        lines.append({"run_id": first["run_id"], "commit": first["commit"], "benchmark": bench, "params": params,
                      "provider": provider, "command": command, "note": note})
    table = pd.DataFrame(lines)
    if fmt != "table":
        results.write("repro", table, fmt)
        return 0
    print(f"run {first['run_id']}: at commit {first['commit']}{' (a dirty tree: its changes are not known)' if first['dirty'] else ''}"
          f" on {first['device']}; `git checkout {first['commit'][:10]}`, then:")
    for line in lines:
        p = json.loads(line["params"])
        label = f"{line['benchmark']} {p.get('direction', '')} {p.get('seq', p.get('tokens', ''))} {line['provider']}"
        print(f"{' '.join(label.split())}: {line['command'] or '-'}" + (f"  ({line['note']})" if line.get("note") else ""))
    return 0


def repro_command(benchmark: str, params: dict, provider: str, device: str) -> tuple[str | None, str]:
    """(command, note): the mfbench command line whose run measures this row again (with the provider's
    --provider-module where it came from a file or module), or None and why none does."""
    import shlex

    from mfbench.layerbench import CASES
    from mfbench.runner import PRESETS

    dev = "cpu" if device.startswith("cpu") else "cuda"
    note = ""
    if benchmark in ("layer", "block", "model"):
        preset = next((name for name, p in PRESETS.items() if p.model == params.get("preset")
                       and (benchmark, params.get("direction")) in p.items), None)
        if preset is None:
            return None, f"no preset measures model config {params.get('preset')!r} {params.get('direction')}"
        args = ["run", "--preset", preset, "--device", dev, "--providers", provider, "--seq", str(params["seq"]),
                "--benchmarks", benchmark, "--dtype", params["dtype"], "--weighting", params["weighting"]]
    elif benchmark == "layer-kernel":
        shape = (params.get("direction"), params.get("tokens"), params.get("in_features"), params.get("out_features"),
                 params.get("tau"))
        cases = next((name for name, cs in CASES.items()
                      if any((c.direction, c.tokens, c.in_features, c.out_features, c.tau) == shape for c in cs)), None)
        if cases is None:
            return None, "no case set holds this shape"
        args = ["layers", "--cases", cases, "--device", dev, "--providers", provider, "--dtype", params["dtype"],
                "--weighting", params["weighting"]]
    elif benchmark.startswith("accuracy:"):
        args = ["snapshot", "eval", params["snapshot"], "--device", dev, "--sequences", str(params["eval_sequences"])]
        args += [] if provider == "dense" else ["--providers", provider]
    elif benchmark.startswith("train:"):
        args = ["train", "--preset", params["preset"], "--task", benchmark.removeprefix("train:"), "--arch",
                params["architecture"], "--steps", str(params["steps"]), "--seed", str(params["seed"]), "--device", dev]
        args += [] if params["architecture"] == "dense" else ["--provider", provider]
    elif benchmark.startswith("asv:"):
        method = benchmark.removeprefix("asv:")
        return (f"python -m mfbench.asvrun bench --bench {shlex.quote('^' + method.replace('.', chr(92) + '.') + '$')}",
                "asv's own run of the suites; its parameters come from the MFBENCH_ASV_* variables")
    else:
        return None, "measured by the run as a whole (the machine's ceilings, idle power, ranks)"
    known = provider in providers.names()
    origin = providers.get(provider).origin if known else ""
    if origin.startswith("module "):
        args += ["--provider-module", origin.removeprefix("module ").split(" (")[0]]
    elif origin.startswith("entry point"):
        note = f"the provider comes from an installed package ({origin})"
    elif not known and provider != "-":
        note = (f"provider {provider!r} is not registered here: install its package, or give the file or module "
                "that registers it with --provider-module")
    return "mfbench " + shlex.join(args), note


def cmd_compare(args: argparse.Namespace) -> int:
    from mfbench import results
    from mfbench.results import HIGHER_IS_BETTER, short_direction, worse

    frame = _load(args.results_dir)
    a, b = _pick_run(frame, args.run_a), _pick_run(frame, args.run_b)
    keys = ["benchmark", "params", "provider"]
    metric = args.metric
    ta = a[a["metric"] == metric].set_index(keys)
    tb = b[b["metric"] == metric].set_index(keys)
    both = ta.merge(tb, left_index=True, right_index=True, how="inner", suffixes=("_a", "_b"))
    if both.empty:
        raise UsageError(f"the two runs have no {metric!r} measurement in common")
    # GPU runs: the kernels' own time, steady where a time is the host's (see measure.timing)
    ka = a[a["metric"] == "kernel_time"].set_index(keys)["value"]
    kb = b[b["metric"] == "kernel_time"].set_index(keys)["value"]
    kernel_ratio = (kb / ka).dropna() if metric == "time" else ka.iloc[:0]
    words = ("slower", "faster") if metric.endswith("time") else ("worse", "better")
    compared = []
    for (bench, params, provider), row in both.iterrows():
        spreads = [(row[f"spread_high_{s}"] - row[f"spread_low_{s}"]) / row[f"value_{s}"] for s in "ab"]
        noise = max((x for x in spreads if x == x), default=0.0)  # NaN: a single figure, no spread
        ratio = row["value_b"] / row["value_a"]
        verdict = ("within noise" if abs(ratio - 1) <= noise
                   else words[0] if worse(metric, row["value_a"], row["value_b"]) else words[1])
        if any("host-bound" in str(row[f"flags_{side}"]).split(",") for side in "ab"):
            verdict += " (host-bound)"
        compared.append({"benchmark": bench, "params": params, "provider": provider, "metric": metric,
                         "unit": row["unit_a"], "run_a": a["run_id"].iloc[0], "run_b": b["run_id"].iloc[0],
                         "a": row["value_a"], "b": row["value_b"], "ratio": ratio, "noise": noise, "verdict": verdict,
                         "kernel_ratio": kernel_ratio.get((bench, params, provider), float("nan"))})
    if args.format != "table":
        results.write("comparison", pd.DataFrame(compared), args.format)
        return 0
    out = []
    for c in compared:
        p = json.loads(c["params"])
        line = {"benchmark": c["benchmark"], "dir": short_direction(p.get("direction", "-")), "seq": p.get("seq", "-"),
                "provider": c["provider"], "A": f"{c['a']:.4g}", "B": f"{c['b']:.4g}", "B/A": f"{c['ratio']:.3f}",
                "IQR/median": f"{c['noise']:.1%}", "verdict": c["verdict"]}
        if not kernel_ratio.empty:
            k = c["kernel_ratio"]
            line["kernel B/A"] = "-" if k != k else f"{k:.3f}"
        out.append(line)
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    print(f"A = {a['run_id'].iloc[0]} ({a['device'].iloc[0]}), B = {b['run_id'].iloc[0]} ({b['device'].iloc[0]}); "
          f"{metric} in {both['unit_a'].iloc[0] or '-'}, {better} is better")
    print(pd.DataFrame(out).to_string(index=False))
    return 0


def _start(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """(device, rank, world size): this rank's device under torchrun with --distributed, else --device."""
    if not args.distributed:
        return _device(args.device or _default_device()), 0, 1
    from mfbench import distributed

    try:
        device = distributed.init("cpu" if (args.device or _default_device()) == "cpu" else "cuda")
    except distributed.LaunchError as exc:
        raise UsageError(str(exc)) from None
    return (device, *distributed.rank_and_world())


def _train_provider(text: str | None, device: torch.device) -> str:
    """The provider the MemoryFormer trains with: the fastest exact one measured for the device by default."""
    name = text or ("triton" if device.type == "cuda" else "embedding_bag")
    if name not in providers.names(exact_only=True):
        raise UsageError(f"--provider {name!r}: train through one of {', '.join(providers.names(exact_only=True))}")
    reason = providers.unavailable(name, str(device), torch.float32)
    if reason:
        raise UsageError(f"provider {name} cannot run on {device}: {reason}")
    return name


def cmd_train(args: argparse.Namespace) -> int:
    from mfbench import results, snapshots, train
    from mfbench.tasks import synthetic

    try:
        rec = train.recipe(args.preset, steps=args.steps, seed=args.seed)
        task = synthetic.make(args.task)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if rec.steps < 1:
        raise UsageError(f"--steps must be positive, got {rec.steps}")
    device, rank, world = _start(args)
    if args.distributed:
        from mfbench import distributed
    provider = _train_provider(args.provider, device)
    archs = list(train.ARCHITECTURES) if args.arch == "both" else [args.arch]
    directory = args.results_dir or results.project_dir()
    if not args.no_save and rank == 0:
        _ready_to_write(directory)
    run = results.Run.start(str(device))
    if world > 1:
        run = distributed.rank_run(distributed.broadcast(run), device)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"run {run.run_id}: train {', '.join(archs)} on {task.name} ({task.spec()}), preset {rec.name}: "
          f"{rec.steps} steps x {rec.batch} sequences x {task.seq_len} tokens, dense lr {rec.lr:g}, "
          f"MemoryFormer lr x{train.LR_RATIO:g}, on {device}" + (f" via {provider}" if "memoryformer" in archs else "")
        + (f", DDP over {world} ranks" if world > 1 else ""), flush=True)
    summary = []
    for arch in archs:
        try:
            trained = train.train(arch, rec, task, device, provider, progress=lambda m: say(m, flush=True))
        except KeyboardInterrupt as exc:
            print(f"interrupted while training {arch}: nothing of it is kept", file=sys.stderr)
            return 128 + getattr(exc, "signum", signal.SIGINT)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if world > 1:
            # per-rank energy and time stay per rank; rank 0 adds them up where a total is wanted
            mine = {"device": run.device, "fingerprint": run.fingerprint, "curve": trained.curve}
            rank_curves = distributed.gather(mine)
            if rank != 0:
                continue
        correct, scored, _ = snapshots.task_accuracy(trained.model, task, rec.eval_sequences, train.EVAL_SEED, device)
        acc = correct / scored
        label = "dense" if arch == "dense" else provider
        extra = {"recipe": train.recipe_dict(rec), "train_provider": label, "curve": trained.curve,
                 "trained_seconds": trained.seconds, "lr": trained.lr, "device": run.device,
                 "fingerprint": json.loads(run.fingerprint), "run_id": run.run_id,
                 "eval": {"sequences": rec.eval_sequences, "seed": train.EVAL_SEED, "chance": task.chance},
                 "accuracy": {label: acc}}
        snap = None if args.no_save else snapshots.save(trained.model, arch, trained.config, task, extra,
                                                        args.snapshots_dir)
        rows = train_rows(run, arch, label, rec, task, trained, acc, scored, snap.id if snap else None)
        if world > 1:
            rows = distributed.tag_rank(rows) + rank_train_rows(run, rows[0], rank_curves)
        if not args.no_save:
            _append(rows, directory)
            print(f"  snapshot {snap.id} at {snap.path}; {len(rows)} rows appended", flush=True)
        value = {r["metric"]: r["value"] for r in rows}  # per-rank rows have metric names of their own
        summary.append({"architecture": arch, "provider": label, "lr": f"{trained.lr:g}",
                        "final loss": f"{value['final_loss']:.3f}", "accuracy": f"{acc:.3f}",
                        "chance": f"{task.chance:.3f}", "ms/step": f"{1e3 * value['time_per_step']:.1f}",
                        "J/step": f"{value['energy_per_step']:.3g}" if "energy_per_step" in value else "-",
                        "train s": f"{trained.seconds:.0f}", "snapshot": snap.id if snap else "-"})
    if args.distributed:
        distributed.dist.barrier()
        distributed.dist.destroy_process_group()
        if rank != 0:
            return 0
    _print_frame(pd.DataFrame(summary))
    return 0


def rank_train_rows(run, like: dict, curves: list[dict]) -> list[dict]:
    """Each rank's own time and energy per step (its device, its fingerprint), and their derived totals."""
    import dataclasses
    import statistics

    out, total = [], 0.0
    params = json.loads(like["params"])
    for r, info in enumerate(curves):
        rank_run = dataclasses.replace(run, device=info["device"], fingerprint=info["fingerprint"])
        p = {**params, "rank": r, "world_size": len(curves)}
        out.append(rank_run.row(like["benchmark"], p, like["provider"], "rank_time_per_step",
                                statistics.median(c["seconds_per_step"] for c in info["curve"]), "s", flags=[f"rank={r}/{len(curves)}"]))
        joules = [c["joules_per_step"] for c in info["curve"] if c["joules_per_step"] is not None]
        if joules:
            out.append(rank_run.row(like["benchmark"], p, like["provider"], "rank_energy_per_step",
                                    statistics.median(joules), "J", flags=[f"rank={r}/{len(curves)}"]))
            total += statistics.median(joules)
    if total and len([r for r in out if r["metric"] == "rank_energy_per_step"]) == len(curves):
        out.append(run.row(like["benchmark"], {**params, "world_size": len(curves)}, like["provider"],
                           "energy_per_step_all_ranks", total, "J", flags=["derived:sum-of-ranks"]))
    return out


def train_rows(run, arch: str, provider: str, rec, task, trained, acc: float, scored: int,
               snapshot: str | None) -> list[dict]:
    """Rows (benchmark 'train:TASK') of one trained model: accuracy, final loss, time, throughput, energy."""
    import statistics

    params = {"preset": rec.name, "architecture": arch, "steps": rec.steps, "batch": rec.batch, "lr": trained.lr,
              "seed": rec.seed, "tokens_per_step": trained.tokens_per_step, "snapshot": snapshot,
              **{f"task_{k}": v for k, v in task.spec().items()}, "chance": task.chance}
    bench = f"train:{task.name}"
    per_step = [p["seconds_per_step"] for p in trained.curve]
    q = statistics.quantiles(per_step, n=4) if len(per_step) > 1 else [per_step[0]] * 3
    out = [run.row(bench, params, provider, "accuracy", acc, "fraction", samples=scored),
           run.row(bench, params, provider, "final_loss", trained.curve[-1]["loss"], "nats"),
           run.row(bench, params, provider, "time_per_step", statistics.median(per_step), "s", spread_low=q[0],
                   spread_high=q[2], spread_kind="iqr", samples=len(per_step), flags=["per-log-interval"]),
           run.row(bench, params, provider, "tokens_per_s", statistics.median(p["tokens_per_s"] for p in trained.curve),
                   "tokens/s")]
    joules = [p["joules_per_step"] for p in trained.curve if p["joules_per_step"] is not None]
    if joules:
        out.append(run.row(bench, params, provider, "energy_per_step", statistics.median(joules), "J",
                           samples=len(joules), flags=[trained.curve[0]["energy_method"]]))
    return out


def cmd_snapshot(args: argparse.Namespace) -> int:
    from mfbench import results, snapshots

    try:
        if args.snapshot_command == "list":
            snaps = snapshots.listing(args.snapshots_dir)
            if not snaps:
                print(f"no snapshots under {args.snapshots_dir or snapshots.directory()}")
                return 0
            _print_frame(pd.DataFrame([{
                "id": s.id, "architecture": s.meta["architecture"], "preset": s.meta["config"]["name"],
                "task": s.meta["task"]["task"], "steps": s.meta["recipe"]["steps"],
                "accuracy": ", ".join(f"{k} {v:.3f}" for k, v in s.meta["accuracy"].items()),
                "commit": s.meta["commit"][:10], "MB": f"{s.meta['weights_bytes'] / 2**20:.1f}",
                "created": s.meta["created_utc"]} for s in snaps]))
            return 0
        snap = snapshots.find(args.id, args.snapshots_dir, architecture=None if args.id != "latest" else "memoryformer")
    except snapshots.SnapshotError as exc:
        raise UsageError(str(exc)) from None
    device = _device(args.device or _default_device())
    names = _provider_list(args.providers, providers.names(exact_only=True))
    tolerance = snapshots.ACCURACY_TOLERANCE if args.tolerance is None else args.tolerance
    print(f"snapshot {snap.id}: {snap.meta['architecture']} {snap.meta['config']['name']} on "
          f"{snap.meta['task']['task']}, trained at {snap.meta['commit'][:10]}; tolerance {tolerance:g}", flush=True)
    measured = snapshots.evaluate(snap, names, device, args.sequences, progress=lambda m: print(m, flush=True))
    reference = measured[0]
    lines, failed = [], []
    for m in measured:
        agrees = m.agrees_with(reference, tolerance)
        if not agrees:
            failed.append(m.provider)
        lines.append({"provider": m.provider,
                      "accuracy": "-" if m.accuracy is None else f"{m.accuracy:.4f}",
                      "vs reference": "-" if m.accuracy is None or reference.accuracy is None
                      else f"{m.accuracy - reference.accuracy:+.4f}",
                      "bucket agreement": "-" if m.bucket_agreement is None else f"{m.bucket_agreement:.6f}",
                      "verdict": m.verdict(reference, tolerance)})
    _print_frame(pd.DataFrame(lines))
    for name in args.choice.split(",") if args.choice else []:
        _score_choice(snap, name.strip(), args, device, [m.provider for m in measured if not (m.skipped or m.failed)])
    if not args.no_save:
        run = results.Run.start(str(device))
        rows = snapshots.rows(snap, measured, run, args.sequences)
        try:
            path = results.append(rows, args.results_dir or results.project_dir())
        except results.ResultsError as exc:
            raise UsageError(str(exc)) from None
        print(f"wrote {len(rows)} rows to {path} (run {run.run_id})")
    if failed:
        broken = [m.provider for m in measured if m.failed and m.provider in failed]
        differ = [name for name in failed if name not in broken]
        said = ([f"{', '.join(differ)} differ from reference by more than {tolerance:g}"] if differ else []) + \
            ([f"{', '.join(broken)} failed to run"] if broken else [])
        print(f"accuracy regression: {'; '.join(said)}", file=sys.stderr)
        return 1
    return 0


def _score_choice(snap, name: str, args: argparse.Namespace, device: torch.device, names: list[str]) -> None:
    from mfbench.tasks import choice

    vocab = snap.meta["config"]["vocab_size"]
    if vocab < choice.BYTE_VOCAB:
        raise UsageError(f"snapshot {snap.id} reads {vocab} token ids; multiple-choice text needs a byte "
                         f"vocabulary of {choice.BYTE_VOCAB} or more")
    try:
        questions = choice.load(name, args.data, args.limit)
    except (choice.DataMissing, ValueError) as exc:
        raise UsageError(str(exc)) from None
    model = snap.load_model(device)
    for provider in names:
        if hasattr(model, "set_provider"):
            model.set_provider(provider)
        s = choice.score(model, questions, device)
        print(f"{name}: {provider}: acc {s.acc:.4f}, acc_norm {s.acc_norm:.4f} over {s.questions} questions")


def _path(text: str):
    from pathlib import Path

    return Path(text)


REFRESH_HELP = ("measure this machine's copy and matmul ceilings again instead of using the cached ones (they "
                "are measured again anyway when older than MFBENCH_CEILINGS_MAX_AGE_DAYS or from another machine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfbench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"mfbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print this machine's fingerprint (CPU, RAM, GPU, driver, versions)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("flops", help="paper Table 1 recomputed beside the printed figures")
    p.add_argument("--seq", type=int, default=2048, help="sequence length (default 2048, the paper's)")
    p.set_defaults(func=cmd_flops)

    for name, func, helptext in (
        ("layers", cmd_layers, "benchmark every provider on a set of Memory Layer shapes"),
        ("bench", cmd_bench, "the everyday comparison: Memory Layer providers vs the dense layer"),
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

    p = sub.add_parser("profile", help="Nsight Compute counters (DRAM, L2, L1, throughput, occupancy) of each "
                       "provider's call at a set of Memory Layer shapes, as rows")
    p.add_argument("--cases", default="gpu", help="case set: gpu, paper, cpu or smoke (default gpu)")
    p.add_argument("--dtype", default="float16", help="float32, float16 or bfloat16 (default float16)")
    p.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names()))
    p.add_argument("--results-dir", help="result tables to append to (default: the project's results/)")
    _provider_module_option(p)
    p.set_defaults(func=cmd_profile)

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
    _provider_module_option(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("show", help="list runs, or summarise one (RUN: any unique part of its id, or 'latest')")
    p.add_argument("run", nargs="?")
    p.add_argument("--results-dir")
    p.add_argument("--repro", metavar="RUN", help="the command line that measures each row of RUN again")
    _format_option(p, "a table, or the rows (the run list without RUN) as json or csv")
    _provider_module_option(p)  # --repro names the file or module a provider came from
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="ratios of a metric (default: time) between two runs, with their spread (RUN: any unique part of "
                       "its id, or 'latest')")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--metric", default="time", help="the metric to compare, judged by its direction (default time)")
    p.add_argument("--results-dir")
    _format_option(p, "a table, or one record per compared row as json or csv")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("train", help="train MemoryFormer and the dense baseline on a synthetic task into snapshots")
    p.add_argument("--preset", default="micro", help="micro (CPU, minutes) or tiny (one GPU) (default: micro)")
    p.add_argument("--task", default="mqar", help="mqar or induction (default: mqar)")
    p.add_argument("--arch", default="both", choices=("both", "memoryformer", "dense"))
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--seed", type=int, help="initialisation and data seed (default 0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--provider", help="how MemoryFormer's layers compute while training (default: triton on a "
                   "GPU, embedding_bag on the CPU)")
    p.add_argument("--results-dir", help="result tables to append to (default: the project's results/)")
    p.add_argument("--snapshots-dir", type=_path, help="where snapshots go (default: results/snapshots)")
    p.add_argument("--no-save", action="store_true", help="train and print only")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: DistributedDataParallel, the same global batch split over the ranks")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("snapshot", help="list snapshots, or re-evaluate one through every provider")
    ssub = p.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND", required=True)
    q = ssub.add_parser("list", help="the stored snapshots")
    q.add_argument("--snapshots-dir", type=_path)
    q.set_defaults(func=cmd_snapshot)
    q = ssub.add_parser("eval", help="accuracy through every provider; exit 1 if one disagrees with reference")
    q.add_argument("id", nargs="?", default="latest", help="snapshot id or prefix (default: the newest MemoryFormer)")
    q.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names(exact_only=True)))
    q.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    q.add_argument("--sequences", type=int, help="evaluation sequences (default: the snapshot's)")
    q.add_argument("--tolerance", type=float, default=None, help="allowed accuracy difference from reference")
    q.add_argument("--choice", help="also score multiple-choice tasks: piqa, arc_easy, arc_challenge, winogrande, generic")
    q.add_argument("--data", help="directory (or file) holding the multiple-choice JSONL")
    q.add_argument("--limit", type=int, help="score only the first N questions")
    q.add_argument("--snapshots-dir", type=_path)
    q.add_argument("--results-dir")
    q.add_argument("--no-save", action="store_true")
    _provider_module_option(q)
    q.set_defaults(func=cmd_snapshot)
    return parser


def _format_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--format", default="table", choices=("table", "json", "csv"),
                   help=f"{what} (json: the schema in mfbench/results.schema.json)")


def _provider_module_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider-module", action="append", metavar="FILE_OR_MODULE", default=[],
                   help="a .py file or module that registers providers (mfbench.register_provider); repeatable. "
                        f"Installed packages are found through the {providers.ENTRY_POINT_GROUP} entry points, and "
                        f"{providers.MODULES_ENV} names modules for every process")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "dtype", "x") is None:
        args.dtype = "float16" if (args.device or _default_device()).startswith("cuda") else "float32"
    if args.func is cmd_flops and args.seq < 1:
        print("mfbench: error: --seq must be a positive integer", file=sys.stderr)
        return 2
    from mfbench.results import ResultsError
    from mfbench.snapshots import SnapshotError

    previous = _catch_signals()
    try:
        for spec in getattr(args, "provider_module", []):
            try:
                providers.load_module(spec)
            except (providers.ProviderModuleError, ValueError) as exc:  # ValueError: a name registered twice
                raise UsageError(str(exc).splitlines()[0]) from None
        return args.func(args)
    except (UsageError, ResultsError, SnapshotError) as exc:  # a damaged snapshot is not a regression (1)
        print(f"mfbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("mfbench: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:
        # the reader left (`mfbench show | head`); Python would complain again when flushing stdout at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (captured in-process)
            pass
        return 128 + signal.SIGPIPE
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, and cannot be put back from here
                signal.signal(signum, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM (CI cancelling a job, ``timeout``), raised where Ctrl-C would be so it is handled the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _catch_signals() -> dict:
    """SIGTERM raises ``Terminated`` while a command runs; returns the handlers of both signals to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signal.SIGINT: signal.getsignal(signal.SIGINT),
            signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated)}


def _stopped(exc: KeyboardInterrupt) -> int:
    """The signal that stopped a measuring command (SIGINT, or SIGTERM through ``Terminated``); from now on
    both are ignored, so a second Ctrl-C must not cost the rows being written."""
    _ignore_signals()
    return getattr(exc, "signum", signal.SIGINT)


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
