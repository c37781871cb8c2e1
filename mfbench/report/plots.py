"""Plots of the result tables (seaborn), PNG and SVG under results/plots/.

- ``regression``: each benchmark's median time against commit, per device and provider;
- ``roofline``: every Memory Layer measurement on its device's measured roofline;
- ``crossover``: time and energy per token against tokens, MemoryFormer providers vs dense, with the
  crossover marked or "no crossover up to N tokens" said on the plot;
- ``flops_vs_time``: analytic FLOPs against measured time: what FLOPs predict and what they don't;
- ``accuracy``: snapshot accuracy against commit, per task, device and provider (a kernel that changes
  answers shows as a provider leaving the others), with each task's chance level;
- ``training``: the loss curves and time per step of the stored snapshots, MemoryFormer vs dense.

    python -m mfbench.report.plots [--results-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from matplotlib.lines import Line2D  # noqa: E402

from mfbench.core import providers  # noqa: E402
from mfbench.store import results  # noqa: E402

RUNNER_BENCHMARKS = ("layer", "block", "model")


def _expand(frame: pd.DataFrame) -> pd.DataFrame:
    """Runner rows with their params as columns, newest run per (device, commit, measurement) kept."""
    frame = frame[frame["benchmark"].isin(RUNNER_BENCHMARKS)].copy()
    if frame.empty:
        return frame
    params = pd.DataFrame([json.loads(p) for p in frame["params"]], index=frame.index)
    frame = pd.concat([frame, params[["seq", "direction", "d", "dtype"]]], axis=1)
    frame["commit_short"] = frame["commit"].str[:8] + np.where(frame["dirty"], "+", "")
    return frame


def _wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement, a column per metric, and ``host_bound``: its time is the host's."""
    if frame.empty:
        return pd.DataFrame()
    keys = ["run_id", "time_utc", "device", "commit_short", "benchmark", "direction", "seq", "d", "dtype", "provider"]
    wide = frame.pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    times = frame[frame["metric"] == "time"].set_index(keys)["flags"]
    bound = times.str.split(",").map(lambda flags: "host-bound" in flags)
    wide["host_bound"] = bound.groupby(level=keys).any().reindex(wide.index, fill_value=False).astype(bool)
    return wide.reset_index()


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    # No date and fixed SVG ids: the same rows redraw byte-identical files, so a commit of plots is a diff of data.
    with plt.rc_context({"svg.hashsalt": "mfbench"}):
        for path in paths:
            meta = {"Date": None} if path.suffix == ".svg" else {"Software": None}
            fig.savefig(path, dpi=110, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return paths


def _empty(out: Path, name: str, message: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return _save(fig, out, name)


# --- one colour per provider, in every figure ------------------------------------------------------------

BASELINE_COLOUR = "#404040"  # the dense baseline: dark grey, so every lookup provider is read against it
# The built-in lookups in registry order take tab10's colours (its grey left out: that is the baseline's);
# any other name (a plugin, a provider of old rows) takes a tab20b colour chosen by a hash of its name, so it
# keeps that colour whichever other providers a figure shows.
_LOOKUP_COLOURS = [c for i, c in enumerate(sns.color_palette("tab10")) if i != 7]
_OTHER_COLOURS = sns.color_palette("tab20b")


def _builtins() -> list[str]:
    return [n for n in providers.names() if providers.get(n).origin == "built-in"]


def provider_colour(name: str) -> str | tuple:
    """The colour ``name`` has in every plot: fixed by the registry, not by which providers a plot holds."""
    builtins = _builtins()
    if name in builtins:
        if providers.get(name).baseline:
            return BASELINE_COLOUR
        lookups = [n for n in builtins if not providers.get(n).baseline]
        return _LOOKUP_COLOURS[lookups.index(name) % len(_LOOKUP_COLOURS)]
    return _OTHER_COLOURS[zlib.crc32(name.encode()) % len(_OTHER_COLOURS)]


def provider_order(names) -> list[str]:
    """``names`` in registry order (built-ins first), the others after them alphabetically: every legend
    lists the providers in one order."""
    builtins = _builtins()
    present = set(names)
    return [n for n in builtins if n in present] + sorted(present - set(builtins))


def _hue(frame: pd.DataFrame) -> dict:
    """seaborn's hue arguments for a frame's providers: the fixed colours and the registry order."""
    order = provider_order(frame["provider"].unique())
    return {"hue": "provider", "hue_order": order, "palette": {n: provider_colour(n) for n in order}}


def _values(column: pd.Series) -> str:
    """A column's distinct values for a title: '512' or '512/2048'."""
    return "/".join(str(v) for v in sorted(column.dropna().unique()))


def _shape(frame: pd.DataFrame) -> str:
    """The width and dtype of a panel's measurements, for its title (tokens are on the x axis or in the label)."""
    return f"d={_values(frame['d'])}, {_values(frame['dtype'])}"


def _legend_below(fig: plt.Figure, handles: list, labels: list[str] | None = None, ncol: int = 6) -> None:
    """One legend for the whole figure, under it: never over a panel's data."""
    labels = labels if labels is not None else [h.get_label() for h in handles]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), ncol),
               fontsize=8, frameon=False)


def _provider_handles(names) -> list[Line2D]:
    return [Line2D([], [], color=provider_colour(n), marker="o", label=n) for n in provider_order(names)]


REGRESSION_PLOTS = {  # metric -> (file name, title, what to say when there is nothing to draw)
    "time": ("regression", "Median time against commit", "no timed runs in the result tables yet"),
    "kernel_time": ("regression_kernel", "Kernel time (the GPU's own, launch costs left out) against commit",
                    "no kernel_time rows yet: it is measured on GPUs only"),
}


def regression(frame: pd.DataFrame, out: Path, metric: str = "time") -> list[Path]:
    name, title, nothing = REGRESSION_PLOTS[metric]
    wide = _wide(frame)
    if wide.empty or metric not in wide or wide[metric].isna().all():
        return _empty(out, name, nothing)
    wide = wide.dropna(subset=[metric]).sort_values("time_utc")
    # a panel per case, its title the whole shape and dtype: runs of another width or dtype are another case
    wide["case"] = (wide["benchmark"] + " " + wide["direction"].map(results.short_direction) + " s="
                    + wide["seq"].astype(str) + " d=" + wide["d"].astype(str) + " " + wide["dtype"])
    order = list(dict.fromkeys(wide["commit_short"]))
    grid = sns.relplot(data=wide, x="commit_short", y=metric, style="device", col="case", **_hue(wide),
                       col_wrap=4, kind="line", marker="o", height=2.6, aspect=1.2, facet_kws={"sharey": False},
                       estimator="median", errorbar=("pi", 100))  # the runs' own range, not a bootstrap guess
    grid.set(yscale="log", xlabel="commit", ylabel=f"{metric.replace('_', ' ')} (s)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=7) if len(order) > 1 else None
    grid.figure.suptitle(f"{title}, per device and provider (line: median of the runs at a commit, band: their "
                         "range)", y=1.02)
    return _save(grid.figure, out, name)


def roofline(frame: pd.DataFrame, all_rows: pd.DataFrame, out: Path) -> list[Path]:
    wide = _wide(frame[frame["benchmark"] == "layer"]) if not frame.empty else pd.DataFrame()
    if wide.empty or "arithmetic_intensity" not in wide:
        return _empty(out, "roofline", "no Memory Layer measurements in the result tables yet")
    wide = wide.dropna(subset=["arithmetic_intensity", "flops_per_s"])  # a device without them gets no panel
    if wide.empty:
        return _empty(out, "roofline", "no Memory Layer measurements in the result tables yet")
    ceilings = all_rows[all_rows["benchmark"] == "ceiling"]
    devices = list(dict.fromkeys(wide["device"]))
    fig, axes = plt.subplots(1, len(devices), figsize=(7.4 * len(devices), 4.5), squeeze=False)
    for ax, device in zip(axes[0], devices):
        points = wide[wide["device"] == device]
        sns.scatterplot(data=points, x="arithmetic_intensity", y="flops_per_s", style="direction", size="seq",
                        ax=ax, **_hue(points))
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
        ax.set(xscale="log", yscale="log", xlabel="FLOPs per byte of device memory traffic",
               ylabel="achieved FLOP/s (2 per multiply-add)", title=f"Roofline: {device}, Memory Layer {_shape(points)}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the panel: the points fill its lower right
    fig.tight_layout()
    return _save(fig, out, "roofline")


CROSSOVER_METRICS = (("time", "median time (s)"), ("energy_per_token", "J per token"))


def _crossover_panels(latest: pd.DataFrame) -> list[tuple[tuple, str, str, str, pd.DataFrame]]:
    """The panels that have data, in reading order: per (device, dtype, width), the time panels of each
    benchmark, then the energy panels. A metric a device did not measure (energy on a CPU) gets no panel."""
    panels = []
    for key, group in latest.groupby(["device", "dtype", "d"], sort=False):
        for metric, label in CROSSOVER_METRICS:
            for bench in RUNNER_BENCHMARKS:
                part = group[group["benchmark"] == bench]
                if metric in part and part[metric].notna().any():
                    panels.append((key, bench, metric, label, part))
    return panels


def crossover(frame: pd.DataFrame, out: Path) -> list[Path]:
    wide = _wide(frame[frame["direction"] == "forward"]) if "direction" in frame else pd.DataFrame()
    if wide.empty or "time" not in wide:
        return _empty(out, "crossover", "no forward measurements in the result tables yet")
    keys = ["device", "dtype", "d", "benchmark", "seq", "provider"]
    latest = wide.sort_values("time_utc").groupby(keys, sort=False).last().reset_index()
    panels = _crossover_panels(latest)
    ncols = min(len(RUNNER_BENCHMARKS), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:  # the grid's unused cells: left out, not drawn empty
        fig.delaxes(ax)
    for ax, ((device, dtype, d), bench, metric, label, part) in zip(axes.flat, panels):
        _crossover_panel(ax, part, metric)
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel=label,
               title=f"{bench} forward, d={d}, {dtype}, {device}")
        seqs = sorted(part["seq"].unique())  # the measured lengths, written out: log ticks at 3e3 help no one
        ax.set_xticks(seqs, [str(s) for s in seqs], fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if metric == "time":  # the verdict under the panel, where it covers no point
            ax.text(0.0, -0.16, _crossover_text(part), transform=ax.transAxes, va="top", fontsize=7)
    styles = [Line2D([], [], color="grey", ls="-", marker="o", label="median time of the call"),
              Line2D([], [], color="grey", ls="--", marker="x", label="kernels alone (kernel_time, GPU)"),
              Line2D([], [], color="grey", ls=":", marker="s", label="CUDA-graph replay (graph_time)"),
              Line2D([], [], color="black", ls="", marker="o", mfc="none", ms=9, label="host-bound time")]
    _legend_below(fig, _provider_handles(latest["provider"].unique()) + styles)
    fig.suptitle("MemoryFormer providers vs dense: time and energy per token against tokens (forward)")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return _save(fig, out, "crossover")


def _crossover_panel(ax: plt.Axes, part: pd.DataFrame, metric: str) -> None:
    """One panel's lines: the metric per provider, and on time panels the kernel and graph times and the
    host-bound rings; no legend of its own (the figure's, under it, names every colour and line)."""
    hue = _hue(part)
    sns.lineplot(data=part, x="seq", y=metric, marker="o", legend=False, ax=ax, **hue)
    if metric != "time":
        return
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
    """Where the fastest MemoryFormer provider beats dense on ``metric``; None without a dense baseline."""
    have = part.dropna(subset=[metric])
    dense = have[have["provider"] == "dense"].set_index("seq")[metric]
    best = have[have["provider"] != "dense"].groupby("seq")[metric].min()
    common = sorted(set(dense.index) & set(best.index))
    if not common:
        return None
    faster = [s for s in common if best[s] < dense[s]]
    if not faster:
        return f"no crossover up to {max(common)} tokens: dense is faster everywhere"
    if len(faster) == len(common):
        return f"MemoryFormer faster at every measured length ({min(common)}-{max(common)} tokens)"
    if faster == common[-len(faster):]:  # faster from some length on: a crossover
        return f"crossover: MemoryFormer faster from {min(faster)} tokens"
    return f"no clean crossover: MemoryFormer faster at {', '.join(map(str, faster))} tokens only"


def _crossover_text(part: pd.DataFrame) -> str:
    text = _verdict(part, "time")
    if text is None:
        return "no dense baseline measured"
    common = part[part["seq"].isin(part.loc[part["provider"] == "dense", "seq"])]
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
    return text


def flops_vs_time(frame: pd.DataFrame, out: Path) -> list[Path]:
    wide = _wide(frame)
    if wide.empty or "flops_analytic" not in wide or "time" not in wide:
        return _empty(out, "flops_vs_time", "no measurements in the result tables yet")
    wide = wide.dropna(subset=["flops_analytic", "time"])
    grid = sns.relplot(data=wide, x="flops_analytic", y="time", style="benchmark", col="device", **_hue(wide),
                       height=4, aspect=1.2, facet_kws={"sharex": False, "sharey": False})
    grid.set(xscale="log", yscale="log", xlabel="analytic FLOPs (2 per multiply-add)", ylabel="median time (s)")
    for device, ax in grid.axes_dict.items():
        ax.set_title(f"{device}: {_shape(wide[wide['device'] == device])}, every length")
    grid.figure.suptitle("FLOPs against measured time: fewer FLOPs is not less time", y=1.03)
    return _save(grid.figure, out, "flops_vs_time")


# Snapshots are trained and evaluated in torch's default dtype: ModelConfig has none, and train.py casts nothing.
SNAPSHOT_DTYPE = "float32"


def accuracy(rows: pd.DataFrame, snapshot_dir: Path, out: Path) -> list[Path]:
    acc = rows[rows["benchmark"].str.startswith("accuracy:") & (rows["metric"] == "accuracy")].copy()
    if acc.empty:
        return _empty(out, "accuracy", "no snapshot accuracy in the result tables yet (mfbench snapshot eval)")
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
    grid = sns.relplot(data=acc, x="x", y="value", style="device", col="panel", col_wrap=3, **_hue(acc),
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
    return _save(grid.figure, out, "accuracy")


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
        return _empty(out, "training", "no snapshots with a training curve yet (mfbench train)")
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
    _legend_below(fig, handles, labels, ncol=2)
    return _save(fig, out, "training")


def draw_all(directory: str | Path | None = None, out: str | Path | None = None) -> list[Path]:
    rows = results.load(directory)
    out = Path(out) if out else results.project_dir() / "plots"
    frame = _expand(rows)
    sns.set_theme(style="whitegrid", context="paper")
    paths = []
    paths += regression(frame, out)
    paths += regression(frame, out, "kernel_time")
    paths += roofline(frame, rows, out)
    paths += crossover(frame, out)
    paths += flops_vs_time(frame, out)
    snapshot_dir = Path(directory or results.project_dir()) / "snapshots"
    paths += accuracy(rows, snapshot_dir, out)
    paths += training(snapshot_dir, out)
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
