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
    print(summary(frame))
    return 0


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
        "target": [("-" if pd.isna(t) else f"{t:g} ms {'met' if m else 'MISSED'}")
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
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "dtype", "x") is None:
        args.dtype = "float16" if (args.device or _default_device()).startswith("cuda") else "float32"
    if getattr(args, "seq", 1) < 1:
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
