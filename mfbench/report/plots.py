"""Plots of the result tables (seaborn), PNG and SVG under results/plots/.

- ``regression``: each benchmark's median time against commit, per device and provider;
- ``roofline``: every Memory Layer measurement on its device's measured roofline;
- ``crossover``: time and energy per token against tokens, MemoryFormer providers vs dense, with the
  crossover marked or "no crossover up to N tokens" said on the plot;
- ``flops_vs_time``: analytic FLOPs against measured time: what FLOPs predict and what they don't;
- ``accuracy``: snapshot accuracy against commit, per task, device and provider (a kernel that changes
  answers shows as a provider leaving the others), with each task's chance level;
- ``training``: the loss curves and time per step of the stored snapshots, MemoryFormer vs dense;
- ``decode``: a decode step's time against its batch B per layer width, graph replay and eager call, with the
  analytic break-even B = tau marked and the measured one said under each panel (``report.decode``).
- ``budget_<device>_<task>``: accuracy against seconds and joules spent in budgeted trainings (``report.budget``).

    python -m mfbench.report.plots [--results-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


from mfbench.cost.traffic import layer_traffic  # noqa: E402
from mfbench.report import budget  # noqa: E402
from mfbench.report.crossover import crossover, element_bytes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from mfbench.bench.cases import DECODE_LAYER  # noqa: E402
from mfbench.report.decode import decode_frame, layer_verdicts  # noqa: E402
from mfbench.report.findings import newest  # noqa: E402
from mfbench.core.providers import is_baseline  # noqa: E402
from mfbench.report.style import (empty_plot, expand, hue_args, legend_below,  # noqa: E402
                                  provider_colour, provider_handles, provider_order, save, shape, to_wide)
from mfbench.store import results  # noqa: E402

REGRESSION_PLOTS = {  # metric -> (file name, title, what to say when there is nothing to draw)
    "time": ("regression", "Median time against commit", "no timed runs in the result tables yet"),
    "kernel_time": ("regression_kernel", "Kernel time (the GPU's own, launch costs left out) against commit",
                    "no kernel_time rows yet: it is measured on GPUs only"),
}


def regression(frame: pd.DataFrame, out: Path, metric: str = "time") -> list[Path]:
    name, title, nothing = REGRESSION_PLOTS[metric]
    wide = to_wide(frame)
    if wide.empty or metric not in wide or wide[metric].isna().all():
        return empty_plot(out, name, nothing)
    wide = wide.dropna(subset=[metric]).sort_values("time_utc")
    # a panel per case, its title the whole shape and dtype: runs of another width or dtype are another case
    wide["case"] = (wide["benchmark"] + " " + wide["direction"].map(results.short_direction) + " s="
                    + wide["seq"].astype(str) + " d=" + wide["d"].astype(str) + " " + wide["dtype"])
    order = list(dict.fromkeys(wide["commit_short"]))
    grid = sns.relplot(data=wide, x="commit_short", y=metric, style="device", col="case", **hue_args(wide),
                       col_wrap=4, kind="line", marker="o", height=2.6, aspect=1.2, facet_kws={"sharey": False},
                       estimator="median", errorbar=("pi", 100))  # the runs' own range, not a bootstrap guess
    grid.set(yscale="log", xlabel="commit", ylabel=f"{metric.replace('_', ' ')} (s)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=7) if len(order) > 1 else None
    grid.figure.suptitle(f"{title}, per device and provider (line: median of the runs at a commit, band: their "
                         "range)", y=1.02)
    return save(grid.figure, out, name)


def measured_points(rows: pd.DataFrame, device: str) -> pd.DataFrame:
    """The ``mfbench profile`` cases of ``device`` on the roofline by the DRAM bytes Nsight Compute counted
    (not the modelled bytes): x = FLOPs / measured bytes, y = FLOPs / the kernels' own time."""
    newest_rows = newest(rows, device, ("measured_dram_bytes", "kernel_time"))
    points = []
    for (params, provider), group in newest_rows.groupby(["params", "provider"], sort=False):
        v = dict(zip(group["metric"], group["value"]))
        if not {"measured_dram_bytes", "kernel_time"} <= v.keys() or not v["measured_dram_bytes"]:
            continue
        p = json.loads(params)
        ops = layer_traffic(p["tokens"], p["in_features"], p["out_features"], p["tau"], element_bytes(p["dtype"]), p["direction"],
                            dense=is_baseline(provider)).flops
        points.append({"provider": provider, "d": p["in_features"], "intensity": ops / v["measured_dram_bytes"],
                       "flops_per_s": ops / v["kernel_time"]})
    return pd.DataFrame(points, columns=["provider", "d", "intensity", "flops_per_s"])


def roofline(frame: pd.DataFrame, all_rows: pd.DataFrame, out: Path) -> list[Path]:
    wide = to_wide(frame[frame["benchmark"] == "layer"]) if not frame.empty else pd.DataFrame()
    if wide.empty or "arithmetic_intensity" not in wide:
        return empty_plot(out, "roofline", "no Memory Layer measurements in the result tables yet")
    wide = wide.dropna(subset=["arithmetic_intensity", "flops_per_s"])  # a device without them gets no panel
    if wide.empty:
        return empty_plot(out, "roofline", "no Memory Layer measurements in the result tables yet")
    ceilings = all_rows[all_rows["benchmark"] == "ceiling"]
    devices = list(dict.fromkeys(wide["device"]))
    fig, axes = plt.subplots(1, len(devices), figsize=(7.4 * len(devices), 4.5), squeeze=False)
    for ax, device in zip(axes[0], devices):
        points = wide[wide["device"] == device]
        sns.scatterplot(data=points, x="arithmetic_intensity", y="flops_per_s", style="direction", size="seq",
                        ax=ax, **hue_args(points))
        ceil = ceilings[ceilings["device"] == device]
        copy = ceil.loc[ceil["metric"] == "copy_bandwidth", "value"]
        mm = ceil.loc[ceil["metric"] == "matmul_rate", "value"]
        if copy.empty and "pct_of_copy_ceiling" in points:  # runs before ceilings were rows: derive the copy rate
            copy = points["achieved_bandwidth"] / (points["pct_of_copy_ceiling"] / 100)
        if not copy.empty:
            x = np.logspace(-1.5, 3.5, 200)
            roof = x * float(copy.iloc[-1])
            if not mm.empty:
                roof = np.minimum(roof, float(mm.iloc[-1]))
            ax.plot(x, roof, color="black", lw=1, label="measured roof")
        counted = measured_points(all_rows, device)
        if not counted.empty:  # the layer-kernel cases placed by the DRAM bytes Nsight Compute counted
            ax.scatter(counted["intensity"], counted["flops_per_s"], marker="X", s=70, edgecolors="black", lw=0.6,
                       c=[provider_colour(n) for n in counted["provider"]], zorder=4,
                       label=f"layer cases (d={'/'.join(map(str, sorted(counted['d'].unique())))}) by measured "
                             "DRAM bytes (ncu)")
        ax.set(xscale="log", yscale="log", xlabel="FLOPs per byte of device memory traffic",
               ylabel="achieved FLOP/s (2 per multiply-add)", title=f"Roofline: {device}, Memory Layer {shape(points)}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the panel: the points fill its lower right
    fig.tight_layout()
    return save(fig, out, "roofline")


def flops_vs_time(frame: pd.DataFrame, out: Path) -> list[Path]:
    wide = to_wide(frame)
    if wide.empty or "flops_analytic" not in wide or "time" not in wide:
        return empty_plot(out, "flops_vs_time", "no measurements in the result tables yet")
    wide = wide.dropna(subset=["flops_analytic", "time"])
    grid = sns.relplot(data=wide, x="flops_analytic", y="time", style="benchmark", col="device", **hue_args(wide),
                       height=4, aspect=1.2, facet_kws={"sharex": False, "sharey": False})
    grid.set(xscale="log", yscale="log", xlabel="analytic FLOPs (2 per multiply-add)", ylabel="median time (s)")
    for device, ax in grid.axes_dict.items():
        ax.set_title(f"{device}: {shape(wide[wide['device'] == device])}, every length")
    grid.figure.suptitle("FLOPs against measured time: fewer FLOPs is not less time", y=1.03)
    return save(grid.figure, out, "flops_vs_time")


# Snapshots are trained and evaluated in torch's default dtype: ModelConfig has none, and train.py casts nothing.
SNAPSHOT_DTYPE = "float32"


def accuracy(rows: pd.DataFrame, snapshot_dir: Path, out: Path) -> list[Path]:
    acc = rows[rows["benchmark"].str.startswith("accuracy:") & (rows["metric"] == "accuracy")].copy()
    if acc.empty:
        return empty_plot(out, "accuracy", "no snapshot accuracy in the result tables yet (mfbench snapshot eval)")
    acc = acc.sort_values("time_utc")
    acc["task"] = acc["benchmark"].str.removeprefix("accuracy:")
    acc["commit_short"] = acc["commit"].str[:8]
    params = [json.loads(p) for p in acc["params"]]
    metas = _snapshot_metas(snapshot_dir)
    width = {meta["id"]: f"d={meta['config']['d_model']}" for meta in metas}
    acc["snapshot"] = [p["snapshot"] for p in params]
    acc["panel"] = [f"{t} / {p['preset']} {p['architecture']} ({width.get(p['snapshot'], 'd=?')}, {SNAPSHOT_DTYPE})"
                    for t, p in zip(acc["task"], params)]
    # one point per (commit, device, provider, snapshot): the latest evaluation at that commit
    acc = acc.groupby(["panel", "task", "device", "provider", "snapshot", "commit_short"], sort=False).last().reset_index()
    order = list(dict.fromkeys(acc.sort_values("time_utc")["commit_short"]))
    names = provider_order(acc["provider"])
    # providers side by side around their commit, so equal accuracies do not hide one another
    acc["x"] = acc["commit_short"].map(order.index) + acc["provider"].map(lambda p: (names.index(p) - (len(names) - 1) / 2) * 0.08)
    grid = sns.relplot(data=acc, x="x", y="value", style="device", col="panel", col_wrap=3, **hue_args(acc),
                       kind="line", marker="o", height=3, aspect=1.1, facet_kws={"sharey": False})
    grid.set(xlabel="commit", ylabel="accuracy", ylim=(0, 1.02))
    chance = {meta["task"]["task"]: meta["eval"].get("chance") for meta in metas}
    for panel, ax in grid.axes_dict.items():
        task = panel.split(" / ")[0]
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=7)
        if chance.get(task):
            ax.axhline(chance[task], color="grey", ls=":", lw=1)
            ax.text(0, chance[task], " chance", va="bottom", fontsize=7, color="grey")
    grid.figure.suptitle("Snapshot accuracy against commit, through every provider", y=1.03)
    return save(grid.figure, out, "accuracy")


def _snapshot_metas(snapshot_dir: Path) -> list[dict]:
    """The metadata of the snapshots here, and of those too large to commit whose snapshot.json was kept
    under ``results/training/`` (the GPU tiny runs)."""
    paths = sorted(snapshot_dir.glob("*/snapshot.json")) + sorted((snapshot_dir.parent / "training").glob("*.json"))
    return [json.loads(p.read_text()) for p in paths]


def training(snapshot_dir: Path, out: Path) -> list[Path]:
    metas = _snapshot_metas(snapshot_dir)
    points = [{"task": m["task"]["task"],
               "model": (f"{m['architecture']} ({m['config']['name']} d={m['config']['d_model']}, "
                         f"{m.get('device', '?')}, lr {m['lr']:g})"),
               "device": m.get("device", "?"), "step": p["step"], "loss": p["loss"], "ms/step": 1e3 * p["seconds_per_step"]}
              for m in metas for p in m.get("curve", [])]
    if not points:
        return empty_plot(out, "training", "no snapshots with a training curve yet (mfbench train)")
    frame = pd.DataFrame(points)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.lineplot(data=frame, x="step", y="loss", hue="model", style="task", ax=axes[0])
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()  # one legend for both panels, under them: inside, it covered the curves
    sns.lineplot(data=frame, x="step", y="ms/step", hue="model", style="task", ax=axes[1], legend=False)
    shape = f"d={'/'.join(str(d) for d in sorted({m['config']['d_model'] for m in metas}))}, {SNAPSHOT_DTYPE}"
    axes[0].set_title(f"training loss (answer positions), {shape}")
    axes[1].set_title(f"wall time per step, per log interval, {shape}")
    axes[1].set_yscale("log")
    fig.tight_layout()
    legend_below(fig, handles, labels, ncol=2)
    return save(fig, out, "training")


def decode(rows: pd.DataFrame, out: Path) -> list[Path]:
    """Per device (per CPU model) and layer shape: step time against batch B, each provider's graph replay
    (solid) and eager call (dashed), the analytic break-even B = tau (vertical line), the verdict under it."""
    found = [decode_frame(rows, device) for device in rows["device"].dropna().unique()]
    layer = pd.concat([f[f["benchmark"] == DECODE_LAYER] for f in found if not f.empty] or [pd.DataFrame()])
    if layer.empty:
        return empty_plot(out, "decode", "no decode-layer rows yet (mfbench run --preset decode)")
    layer = layer.astype({"d": int, "h": int, "tau": int, "B": int})
    verdicts = {(v.machine, v.d, v.h, v.tau, v.dtype): v for v in layer_verdicts(layer)}
    panels = list(layer.groupby(["machine", "d", "h", "tau", "dtype"], sort=True))
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        fig.delaxes(ax)
    for ax, (key, part) in zip(axes.flat, panels):
        machine, d, h, tau = key[:4]
        for metric, style, marker in (("graph_time", "-", "o"), ("time", "--", "x")):
            for provider, line in part[part["metric"] == metric].groupby("provider", sort=True):
                line = line.sort_values("B")
                ax.plot(line["B"], line["value"], ls=style, marker=marker, color=provider_colour(provider))
        ax.axvline(tau, color="black", ls=":", lw=1)
        batches = sorted(part["B"].unique())
        ax.set(xscale="log", yscale="log", xlabel="batch B (tokens a step)", ylabel="step time (s)")
        ax.set_title(f"decode layer d={d} h={h}, {key[4]}\n{machine}", fontsize=9)
        ax.set_xticks(batches, [str(b) for b in batches], fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        v = verdicts.get(key)
        said = f"{v.word} ({v.figure})" if v else "no dense baseline measured"
        ax.text(0.0, -0.16, f"measured: {said}\nanalytic break-even B = tau = {tau} (dotted)", transform=ax.transAxes,
                va="top", fontsize=7)
    styles = [Line2D([], [], color="grey", ls="-", marker="o", label="CUDA-graph replay (graph_time)"),
              Line2D([], [], color="grey", ls="--", marker="x", label="eager call (time)"),
              Line2D([], [], color="black", ls=":", label="analytic break-even B = tau")]
    legend_below(fig, provider_handles(layer["provider"].unique()) + styles)
    fig.suptitle("Decoding: a Memory Layer's step time against its batch, MemoryFormer providers vs dense")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return save(fig, out, "decode")


def draw_all(directory: str | Path | None = None, out: str | Path | None = None) -> list[Path]:
    rows = results.load(directory)
    out = Path(out) if out else results.project_dir() / "plots"
    frame = expand(rows)
    sns.set_theme(style="whitegrid", context="paper")
    paths = []
    paths += regression(frame, out)
    paths += regression(frame, out, "kernel_time")
    paths += roofline(frame, rows, out)
    paths += crossover(frame, out, rows)
    paths += flops_vs_time(frame, out)
    snapshot_dir = Path(directory or results.project_dir()) / "snapshots"
    paths += accuracy(rows, snapshot_dir, out)
    paths += training(snapshot_dir, out)
    paths += decode(rows, out)
    paths += budget.plot(rows, out)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.report.plots", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", help="result tables (default: the project's)")
    parser.add_argument("--out", help="output directory (default: results/plots)")
    args = parser.parse_args(argv)
    try:
        paths = draw_all(args.results_dir, args.out)
    except results.ResultsError as exc:
        print(f"mfbench: error: {exc}")
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
