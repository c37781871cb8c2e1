"""Markdown tables of findings, rendered from the result tables so that documents never copy a figure by hand.

``python -m mfbench.report.findings cpu`` prints, per CPU model, the fastest lookup against dense.
``python -m mfbench.report.findings layers --device H200`` prints the newest ``layer-kernel`` times per case and
provider on one device, beside the lookup's floor and the verdict the floor gives: where the floor is
above the dense layer's time, no lookup kernel can beat dense at that shape. ``results/kernels.md`` holds
this output between markers, and a test keeps the two equal. ``... model --device H200`` prints the whole
model's forward, replayed from a CUDA graph and called eagerly, for the README's findings. ``... decode
--device H200`` prints decoding (``report.decode``): step time against batch, the measured break-even batch
per layer width and why, and the whole model's generation step. ``... budget``
prints accuracy at equal time and equal energy per device and task, with its verdict, and ``... seeds`` the
seed spread of the fixed-step trainings (``report.budget``).
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from mfbench.bench.measurement import BELOW_FLOOR
from mfbench.core import registry
from mfbench.report.decode import decode_table, decode_verdicts
from mfbench.store.results import short_direction

METRICS = ("time", "kernel_time", "floor_time")


def _shape(params: str) -> tuple:
    p = json.loads(params)
    return (p["direction"] != "forward", -p["in_features"], p["tokens"], p["tau"], p["dtype"])


def case_label(params: str) -> str:
    p = json.loads(params)
    return f"{short_direction(p['direction'])} s={p['tokens']} d={p['in_features']}"


def newest(frame: pd.DataFrame, device: str, metrics=METRICS) -> pd.DataFrame:
    """The newest of ``metrics`` (time, kernel time, floor) per (shape, provider, metric) of ``device``'s
    layer rows."""
    rows = frame[(frame["benchmark"] == "layer-kernel") & (frame["device"] == device)
                 & frame["metric"].isin(metrics)]
    rows = rows[rows["value"] == rows["value"]].copy()
    rows["params"] = rows["params"].map(shape_params)
    return rows.sort_values("time_utc").drop_duplicates(["params", "provider", "metric"], keep="last")


def shape_params(params: str) -> str:
    """A layer row's params without its target: one line per shape, since a case's target is not part of
    what was measured, and targets change."""
    return json.dumps({k: v for k, v in json.loads(params).items() if k != "target_ms"}, sort_keys=True)


def _value_ms(row: pd.Series | None) -> float:
    if row is None:
        return float("nan")
    return row["value"] * (1e3 if row["unit"] == "s" else 1.0)


def _ms(row: pd.Series | None) -> str:
    if row is None:
        return "-"
    return f"{_value_ms(row):.3g}{_marks(row)}"


def _marks(row: pd.Series) -> str:
    """A time's caveats as the tables print them: host-bound, and below its floor (impossible: the ceilings
    were measured too low)."""
    flags = str(row["flags"]).split(",")
    return (" (host)" if "host-bound" in flags else "") + (" IMPOSSIBLE" if BELOW_FLOOR in flags else "")


def _autotuned(names) -> str | None:
    """The first of ``names`` that is a registered, autotuned provider: the Triton kernels of this repository."""
    return next((n for n in names if n in registry.names() and registry.get(n).autotuned), None)


def layer_table(frame: pd.DataFrame, device: str) -> str:
    """Per shape: each lookup provider's time (triton's kernel time too), dense's time and kernel time,
    the lookup's floor, and floor / dense by either dense figure. ``(host)`` marks a host-bound time."""
    rows = newest(frame, device)
    if rows.empty:
        return f"no layer rows for device {device}\n"
    baseline = {n for n in rows["provider"].unique() if registry.is_baseline(n)}
    lookups = [n for n in ("triton", "embedding_bag", "compiled", "reference") if n in set(rows["provider"])]
    lookups += sorted(set(rows["provider"]) - set(lookups) - baseline)
    # the autotuned kernels' own time beside their median: the kernels this repository writes
    kernel = _autotuned(lookups)
    dense = sorted(baseline)[0] if baseline else None
    head = ["case", *lookups, f"{kernel} kernel" if kernel else None, dense, f"{dense} kernel" if dense else None,
            "floor", "floor / dense", "floor / dense kernel"]
    head = [h for h in head if h]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for params in sorted(rows["params"].unique(), key=_shape):
        at = rows[rows["params"] == params]

        def get(provider: str | None, metric: str) -> pd.Series | None:
            hit = at[(at["provider"] == provider) & (at["metric"] == metric)]
            return None if hit.empty else hit.iloc[-1]

        floors = at[(at["metric"] == "floor_time") & ~at["provider"].isin(baseline)]
        floor = floors.iloc[-1] if not floors.empty else None
        cells = [case_label(params), *(_ms(get(n, "time")) for n in lookups)]
        if kernel:
            cells.append(_ms(get(kernel, "kernel_time")))
        if dense:
            cells += [_ms(get(dense, "time")), _ms(get(dense, "kernel_time"))]
        floor_ms = _value_ms(floor)
        # Which ceiling sets the floor is a flag of the lookups' time rows ("floor:hbm").
        flags = ",".join(str(f) for f in at.loc[at["metric"] == "time", "flags"]).split(",")
        bound = next((f" ({f[len('floor:'):]})" for f in flags if f.startswith("floor:")), "")
        cells.append("-" if floor is None else f"{floor_ms:.3g}{bound}")
        for metric in ("time", "kernel_time"):
            d = _value_ms(get(dense, metric))
            cells.append("-" if d != d or floor_ms != floor_ms else f"{floor_ms / d:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    runs = ", ".join(f"`{r}` ({c[:7]})" for r, c in rows[["run_id", "commit"]].drop_duplicates().itertuples(index=False))
    return "\n".join(lines) + f"\n\nAll in ms; runs {runs}.\n"


def _cpu_model(fingerprint: str) -> str:
    fp = json.loads(fingerprint)
    return f"{fp.get('cpu', '?')}, {fp.get('cpu_cores', '?')} cores"


def cpu_table(frame: pd.DataFrame) -> str:
    """Per CPU model and shape: the fastest lookup provider against dense, from the newest CPU layer rows of
    each model (CPU rows share a device name across models, so the fingerprint's model tells them apart)."""
    rows = frame[(frame["benchmark"] == "layer-kernel") & frame["device"].str.startswith("cpu")]
    if rows.empty:
        return "no CPU layer rows\n"
    rows = rows.assign(model=rows["fingerprint"].map(_cpu_model))
    lines = ["| CPU | case | fastest lookup | dense | lookup / dense | floor / dense | run |", "|---|---|---|---|---|---|---|"]
    for model in sorted(rows["model"].unique()):
        mine = newest(rows[rows["model"] == model], rows["device"].iloc[0])
        for params in sorted(mine["params"].unique(), key=_shape):
            at = mine[(mine["params"] == params) & (mine["metric"] == "time")]
            base = at[at["provider"].map(registry.is_baseline)]
            look = at[~at.index.isin(base.index)]
            floor = mine[(mine["params"] == params) & (mine["metric"] == "floor_time")
                         & mine["provider"].isin(look["provider"])]  # the lookup's floor, not dense's
            if base.empty or look.empty:
                continue
            best, dense = look.loc[look["value"].idxmin()], base.iloc[-1]
            floor_ms = _value_ms(floor.iloc[-1]) if not floor.empty else float("nan")  # rows in ms or s
            lines.append(f"| {model} | {case_label(params)} | {best['provider']} {best['value'] * 1e3:.3g}{_marks(best)} | "
                         f"{dense['value'] * 1e3:.3g}{_marks(dense)} | {best['value'] / dense['value']:.2g} | "
                         f"{floor_ms / (dense['value'] * 1e3):.2g} | `{best['run_id']}` ({best['commit'][:7]}) |")
    return "\n".join(lines) + "\n\nTimes in ms.\n"


MODEL_FIGURES = (("graph_time", "graph replay"), ("time", "eager call, host included (`time`)"))


def model_table(frame: pd.DataFrame, device: str) -> str:
    """The whole model's forward per preset and length, the lookup kernels' model beside dense: replayed
    from a CUDA graph (``graph_time``, what a deployment that captures its calls sees) and called eagerly,
    the host included (``time``). Each line pair is the newest run that measured all four figures."""
    rows = frame[(frame["benchmark"] == "model") & (frame["device"] == device)
                 & frame["metric"].isin([m for m, _ in MODEL_FIGURES])]
    forward = rows["params"].map(lambda p: json.loads(p)["direction"] == "forward").astype(bool)
    rows = rows[(rows["value"] == rows["value"]) & forward]
    names = set(rows["provider"])
    lookup = _autotuned(sorted(names))
    dense = next((n for n in sorted(names) if registry.is_baseline(n)), None)
    if rows.empty or lookup is None or dense is None:
        return f"no model rows with graph_time for a lookup kernel and dense on device {device}\n"
    lines = [f"| model forward, {device} | figure | MemoryFormer ({lookup}) | {dense} | ratio |", "|---|---|---|---|---|"]
    runs = []
    for params in sorted(rows["params"].unique(), key=lambda p: (json.loads(p)["preset"], json.loads(p)["seq"])):
        at = rows[(rows["params"] == params) & rows["provider"].isin([lookup, dense])]
        complete = at.groupby("run_id").filter(lambda g: len(set(zip(g["provider"], g["metric"]))) == 4)
        if complete.empty:
            continue
        run = complete.sort_values("time_utc")["run_id"].iloc[-1]
        mine = complete[complete["run_id"] == run]
        runs.append((run, mine["commit"].iloc[0]))
        p = json.loads(params)
        for metric, label in MODEL_FIGURES:
            v = {r["provider"]: _value_ms(r) for _, r in mine[mine["metric"] == metric].iterrows()}
            lines.append(f"| {p['preset']} s={p['seq']} | {label} | {v[lookup]:.3g} ms | {v[dense]:.3g} ms | "
                         f"{v[lookup] / v[dense]:.2f} |")
    listed = ", ".join(f"`{r}` ({c[:7]})" for r, c in dict.fromkeys(runs))
    return "\n".join(lines) + f"\n\nRuns {listed}.\n"


def main(argv: list[str] | None = None) -> int:
    from mfbench.report.budget import seed_table, table as budget_table
    from mfbench.store import results

    parser = argparse.ArgumentParser(prog="python -m mfbench.report.findings", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    layers = sub.add_parser("layers", help="the layer table of one device")
    layers.add_argument("--device", required=True, help="the rows' device, e.g. H200 or cpu-2cores")
    layers.add_argument("--results-dir", default=None)
    cpu = sub.add_parser("cpu", help="per CPU model, the fastest lookup against dense")
    cpu.add_argument("--results-dir", default=None)
    model = sub.add_parser("model", help="the whole model's forward of one device, graph replay and eager")
    model.add_argument("--device", required=True, help="the rows' device, e.g. H200")
    model.add_argument("--results-dir", default=None)
    decode = sub.add_parser("decode", help="decoding of one device: step time against batch, break-even batch")
    decode.add_argument("--device", required=True, help="the rows' device, e.g. H200 or cpu-2cores")
    decode.add_argument("--results-dir", default=None)
    decode.add_argument("--verdicts", action="store_true", help="the break-even verdicts alone (README's block)")
    budget = sub.add_parser("budget", help="accuracy at equal time and energy per device and task, with the verdict")
    budget.add_argument("--results-dir", default=None)
    seeds = sub.add_parser("seeds", help="the seed spread of the fixed-step trainings behind the snapshots")
    seeds.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    try:
        frame = results.load(args.results_dir)
    except results.ResultsError as exc:
        print(f"mfbench.report.findings: {exc}", file=sys.stderr)
        return 2
    devices = sorted(frame["device"].dropna().unique())
    if getattr(args, "device", None) is not None and args.device not in devices:
        print(f"mfbench.report.findings: no rows for device {args.device!r}; the tables hold {', '.join(devices)}",
              file=sys.stderr)
        return 2
    tables = {"layers": lambda: layer_table(frame, args.device), "cpu": lambda: cpu_table(frame),
              "model": lambda: model_table(frame, args.device),
              "decode": lambda: (decode_verdicts if args.verdicts else decode_table)(frame, args.device),
              "budget": lambda: budget_table(frame), "seeds": lambda: seed_table(frame)}
    sys.stdout.write(tables[args.command]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
