"""The crossover plot: time and energy per token against tokens, MemoryFormer providers against dense, with
the crossover marked or "no crossover up to N tokens" said under each panel, and on the Memory Layer's time
panels the lookup's floor: where the floor lies above dense, no lookup kernel can beat dense there."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from mfbench.bench.cases import BENCHMARKS
from mfbench.core.providers import is_baseline
from mfbench.cost.traffic import floor_seconds, layer_traffic
from mfbench.instruments.ceilings import Ceilings
from mfbench.report.style import (empty_plot, hue_args, legend_below,  # sets Agg
                                  provider_handles, save, to_wide)

import matplotlib.pyplot as plt  # noqa: E402  (after style, which picks the Agg backend)
import matplotlib.ticker  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402



def element_bytes(dtype: str) -> int:
    """Bytes per element of a row's dtype name ('float16'), as the measuring side counts them."""
    return torch.finfo(getattr(torch, dtype)).bits // 8

CROSSOVER_METRICS = (("time", "median time (s)"), ("energy_per_token", "J per token"))


def _crossover_panels(latest: pd.DataFrame) -> list[tuple[tuple, str, str, str, pd.DataFrame]]:
    """The panels that have data, in reading order: per (device, dtype, width), the time panels of each
    benchmark, then the energy panels. A metric a device did not measure (energy on a CPU) gets no panel."""
    panels = []
    for key, group in latest.groupby(["device", "dtype", "d"], sort=False):
        for metric, label in CROSSOVER_METRICS:
            for bench in BENCHMARKS:
                part = group[group["benchmark"] == bench]
                if metric in part and part[metric].notna().any():
                    panels.append((key, bench, metric, label, part))
    return panels


def layer_floors(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The Memory Layer's floor (``cost.traffic``) at each measured forward length, from the device's newest
    ceiling rows: columns device, dtype, d, seq, floor (s). Empty where a device has no ceiling rows."""
    layer = frame[(frame["benchmark"] == "layer") & (frame["direction"] == "forward") & (frame["metric"] == "time")]
    ceilings = rows[rows["benchmark"] == "ceiling"].sort_values("time_utc") if "benchmark" in rows else rows.iloc[0:0]
    found = []
    for (device, params), _ in layer.groupby(["device", "params"], sort=False):
        ceil = ceilings[ceilings["device"] == device].groupby("metric")["value"].last()
        if "copy_bandwidth" not in ceil or "matmul_rate" not in ceil:
            continue
        onchip = ceil.get("onchip_bandwidth")
        have = Ceilings(device, float(ceil["copy_bandwidth"]), float(ceil["matmul_rate"]), "",
                        None if onchip is None or onchip != onchip else float(onchip), "", "", "")
        p = json.loads(params)
        traffic = layer_traffic(p["batch"] * p["seq"], p["d"], p["d"], p["tau"], element_bytes(p["dtype"]))
        found.append({"device": device, "dtype": p["dtype"], "d": p["d"], "seq": p["seq"],
                      "floor": floor_seconds(traffic, have)[0]})
    return pd.DataFrame(found, columns=["device", "dtype", "d", "seq", "floor"]).drop_duplicates()


def crossover(frame: pd.DataFrame, out: Path, rows: pd.DataFrame | None = None) -> list[Path]:
    """``rows``: the whole table, whose ceiling rows give the Memory Layer panels their floor line."""
    floors = layer_floors(frame, rows) if rows is not None and "direction" in frame else pd.DataFrame()
    wide = to_wide(frame[frame["direction"] == "forward"]) if "direction" in frame else pd.DataFrame()
    if wide.empty or "time" not in wide:
        return empty_plot(out, "crossover", "no forward measurements in the result tables yet")
    keys = ["device", "dtype", "d", "benchmark", "seq", "provider"]
    latest = wide.sort_values("time_utc").groupby(keys, sort=False).last().reset_index()
    panels = _crossover_panels(latest)
    ncols = min(len(BENCHMARKS), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:  # the grid's unused cells: left out, not drawn empty
        fig.delaxes(ax)
    for ax, ((device, dtype, d), bench, metric, label, part) in zip(axes.flat, panels):
        floor = pd.DataFrame()
        if bench == "layer" and metric == "time" and not floors.empty:
            floor = floors[(floors["device"] == device) & (floors["dtype"] == dtype) & (floors["d"] == d)]
            floor = floor[floor["seq"].isin(part["seq"])].sort_values("seq")
        _crossover_panel(ax, part, metric, floor)
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel=label,
               title=f"{bench} forward, d={d}, {dtype}, {device}")
        seqs = sorted(part["seq"].unique())  # the measured lengths, written out: log ticks at 3e3 help no one
        ax.set_xticks(seqs, [str(s) for s in seqs], fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if metric == "time":  # the verdict under the panel, where it covers no point
            ax.text(0.0, -0.16, _crossover_text(part, floor), transform=ax.transAxes, va="top", fontsize=7)
    styles = [Line2D([], [], color="grey", ls="-", marker="o", label="median time of the call"),
              Line2D([], [], color="grey", ls="--", marker="x", label="kernels alone (kernel_time, GPU)"),
              Line2D([], [], color="grey", ls=":", marker="s", label="CUDA-graph replay (graph_time)"),
              Line2D([], [], color="black", ls="", marker="o", mfc="none", ms=9, label="host-bound time"),
              Line2D([], [], color="black", ls="-.", label="the lookup's floor (Memory Layer panels)")]
    legend_below(fig, provider_handles(latest["provider"].unique()) + styles)
    fig.suptitle("MemoryFormer providers vs dense: time and energy per token against tokens (forward)")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return save(fig, out, "crossover")


def _crossover_panel(ax: plt.Axes, part: pd.DataFrame, metric: str, floor: pd.DataFrame) -> None:
    """One panel's lines: the metric per provider, and on time panels the kernel and graph times, the
    host-bound rings and (``floor``, Memory Layer panels) the lookup's floor; no legend of its own (the
    figure's, under it, names every colour and line)."""
    hue = hue_args(part)
    sns.lineplot(data=part, x="seq", y=metric, marker="o", legend=False, ax=ax, **hue)
    if metric != "time":
        return
    if not floor.empty:  # dash-dot: no lookup kernel is faster than this; above dense, none can beat dense
        ax.plot(floor["seq"], floor["floor"], color="black", ls="-.", lw=1.2, zorder=2)
    for column, marker, style in (("kernel_time", "x", "--"), ("graph_time", "s", ":")):
        # dashed: the kernels' own device time, what the call would take if launching cost nothing;
        # dotted: replays of a captured CUDA graph, what a deployment that captures its calls sees
        if column in part and part[column].notna().any():
            sns.lineplot(data=part.dropna(subset=[column]), x="seq", y=column, marker=marker, linestyle=style,
                         alpha=0.7, legend=False, ax=ax, **hue)
    bound = part[part["host_bound"]]
    if not bound.empty:  # ringed: the time is the host's issue time, not the device's
        ax.scatter(bound["seq"], bound["time"], s=90, facecolors="none", edgecolors="black", lw=0.8, zorder=3)


def _verdict(part: pd.DataFrame, metric: str) -> str | None:
    """Where a MemoryFormer provider beats dense on ``metric``, naming the providers that do; None without a
    dense baseline."""
    have = part.dropna(subset=[metric])
    baseline = have["provider"].map(is_baseline).astype(bool)
    dense = have[baseline].groupby("seq")[metric].min()
    lookups = have[~baseline]
    best = lookups.groupby("seq")[metric].min()
    common = sorted(set(dense.index) & set(best.index))
    if not common:
        return None
    faster = [s for s in common if best[s] < dense[s]]
    span = (f"at the one measured length ({common[0]} tokens)" if len(common) == 1
            else f"at every measured length ({min(common)}-{max(common)} tokens)")
    if not faster:
        return f"dense faster {span}" if len(common) == 1 else f"no crossover up to {max(common)} tokens: dense is faster everywhere"
    won = lookups[lookups["seq"].isin(faster)]
    who = ", ".join(sorted({r.provider for r in won.itertuples() if getattr(r, metric) < dense[r.seq]}))
    if len(faster) == len(common):
        return f"MemoryFormer ({who}) faster {span}"
    if faster == common[-len(faster):]:  # faster from some length on: a crossover
        return f"crossover: MemoryFormer ({who}) faster from {min(faster)} tokens"
    return f"no clean crossover: MemoryFormer ({who}) faster at {', '.join(map(str, faster))} tokens only"


def _floor_verdict(part: pd.DataFrame, floor: pd.DataFrame) -> str | None:
    """Whether the lookup's floor lies above dense's time (kernel time where measured) at each length."""
    column = "kernel_time" if "kernel_time" in part and part["kernel_time"].notna().any() else "time"
    dense = part[part["provider"].map(is_baseline).astype(bool)].dropna(subset=[column]).groupby("seq")[column].min()
    at = floor.set_index("seq")["floor"].reindex(dense.index).dropna()
    if at.empty:
        return None
    above = [s for s in at.index if at[s] > dense[s]]
    what = "dense's kernel time" if column == "kernel_time" else "dense's time"
    if len(above) == len(at):
        return f"floor (dash-dot) above {what} at every length: no lookup kernel can beat dense here"
    if not above:
        return f"floor (dash-dot) below {what} at every length: a faster kernel could beat dense"
    return f"floor (dash-dot) above {what} at {', '.join(map(str, above))} tokens"


def _crossover_text(part: pd.DataFrame, floor: pd.DataFrame | None = None) -> str:
    text = eager = _verdict(part, "time")
    if text is None:
        return "no dense baseline measured"
    common = part[part["seq"].isin(part.loc[part["provider"].map(is_baseline).astype(bool), "seq"])]
    if "host_bound" in part:
        bound = common[common["host_bound"]]
        if not bound.empty:
            text += f"\n(ringed: {len(bound)} of {len(common)} times are host-bound)"
    kernels = _verdict(part, "kernel_time") if "kernel_time" in part else None
    if kernels:
        text += f"\nkernels alone (dashed): {kernels}"
    graphs = _verdict(part, "graph_time") if "graph_time" in part else None
    if graphs:
        text += f"\ngraph replays (dotted): {graphs}"
        if graphs != eager and "host_bound" in part and common["host_bound"].any():
            # the eager medians are partly the host's issue time: the device's verdict is the replays'
            text += "\n(the eager verdict differs: host-bound times, the graph replays show the device's)"
    floors = _floor_verdict(part, floor) if floor is not None and not floor.empty else None
    if floors:
        text += f"\n{floors}"
    return text
