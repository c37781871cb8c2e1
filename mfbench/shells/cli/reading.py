"""The reading commands: ``show`` (runs, one run's summary, or the command lines that measure it again)
and ``compare`` (two runs, metric by metric)."""

from __future__ import annotations

import argparse
import json
import shlex

import pandas as pd

from mfbench.bench import cases
from mfbench.bench.budget import FRACTIONS
from mfbench.report.budget import table as budget_table
from mfbench.core import providers
from mfbench.report.summaries import compare, compare_table, run_summary
from mfbench.shells.cli import common
from mfbench.shells.cli.common import UsageError
from mfbench.store import documents, results


def pick_run(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
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
    frame = common.load(args.results_dir)
    if args.repro:
        return _show_repro(pick_run(frame, args.repro), args.format)
    if args.run is None:
        listing = results.runs(frame)
        if args.format != "table":
            documents.write("runs", listing.assign(partial=listing["partial"] == "partial"), args.format)
        else:
            print("no runs yet" if listing.empty else listing.to_string(index=False))
        return 0
    rows = pick_run(frame, args.run)
    if args.format != "table":
        documents.write("rows", rows, args.format)
        return 0
    first = rows.iloc[0]
    partial = results.runs(rows)["partial"].iloc[0]
    print(f"run {first['run_id']} on {first['device']} ({first['machine']}), commit {first['commit'][:10]}"
          f"{'+dirty' if first['dirty'] else ''}, {first['time_utc']}"
          + (" - PARTIAL: interrupted before the matrix was done" if partial else ""))
    budget = rows["benchmark"].str.startswith("budget:").all()  # a budget run: its verdict at every fraction
    print(budget_table(rows, fractions=FRACTIONS) if budget else run_summary(rows, wide=args.wide))
    return 0


def _show_repro(rows: pd.DataFrame, fmt: str) -> int:
    """``show --repro RUN``: the command line that measures each (benchmark, parameters, provider) again."""
    first = rows.iloc[0]
    lines = []
    for (bench, params, provider), group in rows.groupby(["benchmark", "params", "provider"], sort=False):
        command, note = repro_command(bench, json.loads(params), provider, group.iloc[0]["device"])
        lines.append({"run_id": first["run_id"], "commit": first["commit"], "benchmark": bench, "params": params,
                      "provider": provider, "command": command, "note": note})
    table = pd.DataFrame(lines)
    if fmt != "table":
        documents.write("repro", table, fmt)
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
    if benchmark.startswith("asv:"):
        method = benchmark.removeprefix("asv:")
        return (f"python -m mfbench.shells.asvrun bench --bench {shlex.quote('^' + method.replace('.', chr(92) + '.') + '$')}",
                "asv's own run of the suites; its parameters come from the MFBENCH_ASV_* variables")
    args, note = _repro_args(benchmark, params, provider, "cpu" if device.startswith("cpu") else "cuda")
    if args is None:
        return None, note
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


def _repro_args(benchmark: str, params: dict, provider: str, dev: str) -> tuple[list[str] | None, str]:
    """The arguments of the command that measures a row of ``benchmark`` again, or None and why none does."""
    baseline = providers.is_baseline(provider)
    if benchmark in cases.BENCHMARKS:
        preset = next((name for name, p in cases.PRESETS.items() if p.model == params.get("preset")
                       and (benchmark, params.get("direction")) in p.items), None)
        if preset is None:
            return None, f"no preset measures model config {params.get('preset')!r} {params.get('direction')}"
        return ["run", "--preset", preset, "--device", dev, "--providers", provider, "--seq", str(params["seq"]),
                "--benchmarks", benchmark, "--dtype", params["dtype"], "--weighting", params["weighting"]], ""
    if benchmark in cases.DECODE_BENCHMARKS:
        return ["run", "--preset", "decode", "--device", dev, "--providers", provider, "--seq", str(params["tokens"]),
                "--benchmarks", benchmark.removeprefix("decode-"), "--dtype", params["dtype"],
                "--weighting", params["weighting"]], ""
    if benchmark == cases.KERNEL:
        shape = tuple(params.get(k) for k in ("direction", "tokens", "in_features", "out_features", "tau"))
        found = next((name for name, cs in cases.CASES.items()
                      if any((c.direction, c.tokens, c.in_features, c.out_features, c.tau) == shape for c in cs)), None)
        if found is None:
            return None, "no case set holds this shape"
        return ["layers", "--cases", found, "--device", dev, "--providers", provider, "--dtype", params["dtype"],
                "--weighting", params["weighting"]], ""
    if benchmark.startswith("accuracy:"):
        args = ["snapshot", "eval", params["snapshot"], "--device", dev, "--sequences", str(params["eval_sequences"])]
        return args + ([] if baseline else ["--providers", provider]), ""
    if benchmark.startswith(("train:", "budget:")):
        kind, task = benchmark.split(":", 1)
        spend = (["--steps", str(params["steps"]), "--seed", str(params["seed"])] if kind == "train" else
                 [f"--budget-{params['budget_kind']}", f"{params['budget']:g}", "--seeds", str(params["seed"])])
        args = ["train", "--preset", params["preset"], "--task", task, "--arch", params["architecture"], *spend,
                "--device", dev]
        return args + ([] if params["architecture"] == "dense" else ["--provider", provider]), ""
    return None, "measured by the run as a whole (the machine's ceilings, idle power, ranks)"


def cmd_compare(args: argparse.Namespace) -> int:
    frame = common.load(args.results_dir)
    a, b = pick_run(frame, args.run_a), pick_run(frame, args.run_b)
    compared = compare(a, b, args.metric)
    if not compared:
        raise UsageError(f"the two runs have no {args.metric!r} measurement in common")
    if args.format != "table":
        documents.write("comparison", pd.DataFrame(compared), args.format)
        return 0
    better = "higher" if args.metric in results.HIGHER_IS_BETTER else "lower"
    print(f"A = {a['run_id'].iloc[0]} ({a['device'].iloc[0]}), B = {b['run_id'].iloc[0]} ({b['device'].iloc[0]}); "
          f"{args.metric} in {compared[0]['unit'] or '-'}, {better} is better")
    print(compare_table(compared))
    return 0
