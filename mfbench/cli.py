"""The ``mfbench`` command line. User mistakes end in a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import pandas as pd
import torch

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
    from mfbench.layerbench import CASES, DTYPES, run_cases, with_weighting
    from mfbench.measure.ceilings import ceilings

    device = _device(args.device or _default_device())
    if args.cases not in CASES:
        raise UsageError(f"unknown case set {args.cases!r}; choose one of {', '.join(CASES)}")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    names = _provider_list(args.providers, providers.names())
    print(f"measuring the ceilings of {device} (cached after the first run) ...", flush=True)
    ceil = ceilings(device)
    onchip = f"{ceil.onchip_bytes_per_s / 1e12:.1f} TB/s" if ceil.onchip_bytes_per_s else "n/a"
    print(f"ceilings: copy {ceil.copy_bytes_per_s / 1e9:.1f} GB/s, matmul "
          f"{ceil.matmul_flops_per_s / 1e12:.1f} TFLOP/s ({ceil.matmul_dtype}), on-chip {onchip}", flush=True)
    cases = with_weighting(CASES[args.cases], args.weighting)
    records = list(run_cases(cases, names, device, DTYPES[args.dtype], ceil, check=not args.no_check,
                             progress=lambda msg: print(msg, flush=True)))
    frame = pd.DataFrame(records)
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {len(frame)} records to {args.csv}")
    if not args.no_save:
        from mfbench import results

        rows = layer_rows(records, results.Run.start(str(device)))
        path = results.append(rows, args.results_dir or results.project_dir())
        print(f"wrote {len(rows)} rows to {path}")
    print(summary(frame))
    return 0


LAYER_METRICS = {  # record field -> (metric, unit)
    "median_s": ("time", "s"), "floor_ms": ("floor_time", "ms"), "fraction_of_floor": ("fraction_of_floor", ""),
    "hbm_gbps": ("achieved_bandwidth", "GB/s"), "rel_err_y": ("rel_error_y", ""),
    "rel_err_grad_x": ("rel_error_grad_x", ""), "rel_err_grad_tables": ("rel_error_grad_tables", ""),
}


def layer_rows(records: list[dict], run) -> list[dict]:
    """Result rows (benchmark 'layer-kernel') from ``run_cases`` records."""
    rows = []
    for rec in records:
        params = {k: rec[k] for k in ("direction", "tokens", "in_features", "out_features", "tau", "weighting", "dtype")}
        if rec.get("target_ms") is not None and rec["target_ms"] == rec["target_ms"]:
            params["target_ms"] = rec["target_ms"]
        if rec.get("skipped"):
            rows.append(run.row("layer-kernel", params, rec["provider"], "skipped", float("nan"), "",
                                flags=[rec["skipped"].replace(",", ";")]))
            continue
        extra = [f"floor:{rec['floor_bound']}"]
        if rec.get("kernel_config"):
            extra.append("config " + rec["kernel_config"].replace(",", ";"))
        if rec.get("met_target") is not None:
            extra.append("target-met" if rec["met_target"] else "target-missed")
        for field, (metric, unit) in LAYER_METRICS.items():
            if field in rec and rec[field] == rec[field]:
                kw = dict(spread_low=rec["q1_s"], spread_high=rec["q3_s"], spread_kind="iqr",
                          samples=rec["samples"], flags=extra) if metric == "time" else {}
                rows.append(run.row("layer-kernel", params, rec["provider"], metric, rec[field], unit, **kw))
    return rows


def summary(frame: pd.DataFrame) -> str:
    """One line per (case, provider): median, floor, fraction of floor, ratio to dense, target."""
    ran = frame[frame.get("median_ms").notna()] if "median_ms" in frame else frame.iloc[0:0]
    if ran.empty:
        return "no provider ran"
    dense = ran[ran["provider"] == "dense"].set_index("case")["median_ms"]
    out = pd.DataFrame({
        "case": ran["case"], "provider": ran["provider"],
        "median ms": ran["median_ms"].map("{:.4g}".format),
        "IQR ms": ((ran["q3_s"] - ran["q1_s"]) * 1e3).map("{:.2g}".format),
        "floor ms": ran["floor_ms"].map("{:.3g}".format) + " " + ran["floor_bound"],
        "of floor": (100 * ran["fraction_of_floor"]).map("{:.0f}%".format),
        "x dense": [f"{m / dense[c]:.1f}" if c in dense.index else "-" for c, m in zip(ran["case"], ran["median_ms"])],
        "target": [("-" if pd.isna(t) or m is None or pd.isna(m) else f"{t:g} ms {'met' if m else 'MISSED'}")
                   for t, m in zip(ran["target_ms"], ran["met_target"])],
    })
    errs = [c for c in ran.columns if c.startswith("rel_err_")]
    if errs:
        out["max rel err"] = ran[errs].max(axis=1).map(lambda v: "-" if pd.isna(v) else f"{v:.1e}")
    return out.to_string(index=False)


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
    device = _device(args.device or _default_device())
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
    try:  # refuse a corrupt or foreign table before spending any time measuring
        results.load(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None
    run = results.Run.start(str(device))
    print(f"run {run.run_id} on {run.device}, commit {run.commit[:10]}{'+dirty' if run.dirty else ''}: "
          f"{len(items)} measurements, preset {args.preset} (model config {cfg.name}, d={cfg.d_model}), {dtype_name}",
          flush=True)
    ceil = ceilings(device)
    rows = []
    try:
        for row in runner.run_matrix(items, cfg, run, device, ceil, preset.energy_seconds,
                                     progress=lambda msg: print(msg, flush=True)):
            rows.append(row)
    except KeyboardInterrupt:
        print(f"interrupted: keeping the {len(rows)} rows measured so far", file=sys.stderr)
    path = results.append(rows, directory)
    print(f"wrote {len(rows)} rows to {path} (run {run.run_id})")
    print(run_summary(pd.DataFrame(rows)))
    return 0


def run_summary(frame: pd.DataFrame) -> str:
    """Time, ratio to dense, achieved bandwidth, energy per token and sanity flags, one line per measurement."""
    import json

    frame = frame[~frame["benchmark"].isin(["idle", "ceiling"])]
    if frame.empty:
        return "no rows"
    quiet = ("2-per-mac", "FlopCounterMode", "nvml-energy-counter", "nvml-power-sampling", "cuda-allocator-peak")
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
                elif flag not in quiet:
                    flags.add(flag)
        t = value.get("time", float("nan"))
        dense = times.get((bench, params, "dense"))
        dense = float(dense.iloc[0]) if dense is not None and len(dense) else float("nan")
        gbps, jpt = value.get("achieved_bandwidth", float("nan")), value.get("energy_per_token", float("nan"))
        lines.append({
            "benchmark": bench, "dir": "fwd" if p["direction"] == "forward" else "bwd", "seq": p["seq"],
            "provider": provider, "median ms": "-" if t != t else f"{t * 1e3:.4g}",
            "x dense": "-" if t != t or dense != dense else f"{t / dense:.2f}",
            "GB/s": "-" if gbps != gbps else f"{gbps / 1e9:.1f}",
            "uJ/token": "-" if jpt != jpt else f"{jpt * 1e6:.3g}",
            "flags": ", ".join(sorted(flags)),
        })
    text = pd.DataFrame(lines).to_string(index=False)
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
    matches = [r for r in listing["run_id"] if r == run_id or r.startswith(run_id)]
    if len(matches) != 1:
        known = ", ".join(listing["run_id"].tail(5))
        raise UsageError(f"run {run_id!r} {'is ambiguous' if matches else 'not found'}; recent runs: {known}")
    return frame[frame["run_id"] == matches[0]]


def cmd_show(args: argparse.Namespace) -> int:
    from mfbench import results

    frame = _load(args.results_dir)
    if args.run is None:
        listing = results.runs(frame)
        print("no runs yet" if listing.empty else listing.to_string(index=False))
        return 0
    rows = _pick_run(frame, args.run)
    first = rows.iloc[0]
    print(f"run {first['run_id']} on {first['device']} ({first['machine']}), commit {first['commit'][:10]}"
          f"{'+dirty' if first['dirty'] else ''}, {first['time_utc']}")
    print(run_summary(rows))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    frame = _load(args.results_dir)
    a, b = _pick_run(frame, args.run_a), _pick_run(frame, args.run_b)
    keys = ["benchmark", "params", "provider"]
    ta = a[a["metric"] == "time"].set_index(keys)
    tb = b[b["metric"] == "time"].set_index(keys)
    both = ta.join(tb, lsuffix="_a", rsuffix="_b", how="inner")
    if both.empty:
        raise UsageError("the two runs have no measurement in common")
    import json

    out = []
    for (bench, params, provider), row in both.iterrows():
        p = json.loads(params)
        spread_a = (row["spread_high_a"] - row["spread_low_a"]) / row["value_a"]
        spread_b = (row["spread_high_b"] - row["spread_low_b"]) / row["value_b"]
        ratio = row["value_b"] / row["value_a"]
        noise = max(spread_a, spread_b)
        out.append({"benchmark": bench, "dir": p["direction"][:3], "seq": p["seq"], "provider": provider,
                    "A ms": f"{row['value_a'] * 1e3:.4g}", "B ms": f"{row['value_b'] * 1e3:.4g}",
                    "B/A": f"{ratio:.3f}", "IQR/median": f"{noise:.1%}",
                    "verdict": "within noise" if abs(ratio - 1) <= noise else ("slower" if ratio > 1 else "faster")})
    print(f"A = {a['run_id'].iloc[0]} ({a['device'].iloc[0]}), B = {b['run_id'].iloc[0]} ({b['device'].iloc[0]})")
    print(pd.DataFrame(out).to_string(index=False))
    return 0


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
        p.add_argument("--dtype", default="float32" if name == "layers" else None,
                       help="float32, float16 or bfloat16 (default float16 on a GPU, float32 on the CPU)")
        p.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names()))
        p.add_argument("--weighting", default="paper", choices=("paper", "released"))
        p.add_argument("--no-check", action="store_true", help="skip the float64 correctness check")
        p.add_argument("--csv", help="also write every record to this CSV file")
        p.add_argument("--results-dir", help="result tables to append to (default: the project's results/)")
        p.add_argument("--no-save", action="store_true", help="print only; append nothing to the result tables")
        p.set_defaults(func=func)

    p = sub.add_parser("run", help="measure a matrix (layer/block/model x provider x seq) into the result tables")
    p.add_argument("--preset", default="default", help="smoke, default or paper (default: default)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--providers", help="comma-separated subset of: " + ", ".join(providers.names()))
    p.add_argument("--seq", help="sequence lengths, e.g. 512,2048 (default: the preset's for this device)")
    p.add_argument("--benchmarks", help="subset of layer,block,model")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default float16 on a GPU, float32 on the CPU)")
    p.add_argument("--weighting", default="paper", choices=("paper", "released"))
    p.add_argument("--results-dir", help="directory of the result tables (default: the project's results/)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("show", help="list runs, or summarise one (RUN may be a prefix or 'latest')")
    p.add_argument("run", nargs="?")
    p.add_argument("--results-dir")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="time ratios between two runs, with their spread")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--results-dir")
    p.set_defaults(func=cmd_compare)
    return parser


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
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"mfbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mfbench: interrupted", file=sys.stderr)
        return 130
