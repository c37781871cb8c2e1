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
import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mfbench import results  # noqa: E402

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
    wide["case"] = wide["benchmark"] + " " + wide["direction"].map(results.short_direction) + " s=" + wide["seq"].astype(str)
    order = list(dict.fromkeys(wide["commit_short"]))
    grid = sns.relplot(data=wide, x="commit_short", y=metric, hue="provider", style="device", col="case",
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
    ceilings = all_rows[all_rows["benchmark"] == "ceiling"]
    devices = list(dict.fromkeys(wide["device"]))
    fig, axes = plt.subplots(1, len(devices), figsize=(7.4 * len(devices), 4.5), squeeze=False)
    for ax, device in zip(axes[0], devices):
        points = wide[wide["device"] == device]
        sns.scatterplot(data=points, x="arithmetic_intensity", y="flops_per_s", hue="provider", style="direction",
                        size="seq", ax=ax)
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
               ylabel="achieved FLOP/s (2 per multiply-add)", title=f"Roofline: {device}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the panel: the points fill its lower right
    fig.tight_layout()
    return _save(fig, out, "roofline")


def crossover(frame: pd.DataFrame, out: Path) -> list[Path]:
    wide = _wide(frame[frame["direction"] == "forward"]) if "direction" in frame else pd.DataFrame()
    if wide.empty or "time" not in wide:
        return _empty(out, "crossover", "no forward measurements in the result tables yet")
    latest = wide.sort_values("time_utc").groupby(["device", "benchmark", "seq", "provider"]).last().reset_index()
    devices = list(dict.fromkeys(latest["device"]))
    benches = [b for b in RUNNER_BENCHMARKS if (latest["benchmark"] == b).any()]
    # a device per pair of rows (time above energy), a benchmark per column: devices read down, sizes across
    fig, axes = plt.subplots(2 * len(devices), len(benches), figsize=(6.6 * len(benches), 3.8 * 2 * len(devices)),
                             squeeze=False)
    for (i, device), (col, bench) in itertools.product(enumerate(devices), enumerate(benches)):
        part = latest[(latest["device"] == device) & (latest["benchmark"] == bench)]
        for row, (metric, label) in enumerate((("time", "median time (s)"), ("energy_per_token", "J per token"))):
            ax = axes[2 * i + row][col]
            if metric not in part or part[metric].isna().all():
                ax.text(0.5, 0.5, f"{bench} {metric} not measured on {device}", ha="center", va="center", fontsize=8)
                ax.set_axis_off()
                continue
            order = sorted(part["provider"].unique())  # one colour per provider in both line sets
            sns.lineplot(data=part, x="seq", y=metric, hue="provider", hue_order=order, marker="o", ax=ax)
            if row == 0 and "kernel_time" in part and part["kernel_time"].notna().any():
                # dashed: the kernels' own device time, what the call would take if launching cost nothing
                sns.lineplot(data=part.dropna(subset=["kernel_time"]), x="seq", y="kernel_time", hue="provider",
                             hue_order=order, marker="x", linestyle="--", alpha=0.7, legend=False, ax=ax)
            if row == 0 and "graph_time" in part and part["graph_time"].notna().any():
                # dotted: replays of a captured CUDA graph, what a deployment that captures its calls sees
                sns.lineplot(data=part.dropna(subset=["graph_time"]), x="seq", y="graph_time", hue="provider",
                             hue_order=order, marker="s", linestyle=":", alpha=0.7, legend=False, ax=ax)
            bound = part[part["host_bound"]]
            if row == 0 and not bound.empty:  # ringed: the time is the host's issue time, not the device's
                ax.scatter(bound["seq"], bound["time"], s=90, facecolors="none", edgecolors="black", lw=0.8,
                           label="host-bound", zorder=3)
            ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel=label, title=f"{bench}, {device}")
            seqs = sorted(part["seq"].unique())  # the measured lengths, written out: log ticks at 3e3 help no one
            ax.set_xticks(seqs, [str(s) for s in seqs], fontsize=8)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the panel: never on data
            if row == 0:
                ax.text(0.02, 0.98, _crossover_text(part), transform=ax.transAxes, va="top", fontsize=6.5, wrap=True,
                        bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    fig.suptitle("MemoryFormer providers vs dense: time and energy per token against tokens")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return _save(fig, out, "crossover")


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
    grid = sns.relplot(data=wide, x="flops_analytic", y="time", hue="provider", style="benchmark", col="device",
                       height=4, aspect=1.2, facet_kws={"sharex": False, "sharey": False})
    grid.set(xscale="log", yscale="log", xlabel="analytic FLOPs (2 per multiply-add)", ylabel="median time (s)")
    grid.figure.suptitle("FLOPs against measured time: fewer FLOPs is not less time", y=1.03)
    return _save(grid.figure, out, "flops_vs_time")


def accuracy(rows: pd.DataFrame, snapshot_dir: Path, out: Path) -> list[Path]:
    acc = rows[rows["benchmark"].str.startswith("accuracy:") & (rows["metric"] == "accuracy")].copy()
    if acc.empty:
        return _empty(out, "accuracy", "no snapshot accuracy in the result tables yet (mfbench snapshot eval)")
    acc = acc.sort_values("time_utc")
    acc["task"] = acc["benchmark"].str.removeprefix("accuracy:")
    acc["commit_short"] = acc["commit"].str[:8]
    params = [json.loads(p) for p in acc["params"]]
    acc["snapshot"] = [p["snapshot"] for p in params]
    acc["panel"] = [f"{t} / {p['preset']} {p['architecture']}" for t, p in zip(acc["task"], params)]
    # one point per (commit, device, provider, snapshot): the latest evaluation at that commit
    acc = acc.groupby(["panel", "task", "device", "provider", "snapshot", "commit_short"], sort=False).last().reset_index()
    order = list(dict.fromkeys(acc.sort_values("time_utc")["commit_short"]))
    names = list(dict.fromkeys(acc["provider"]))
    # providers side by side around their commit, so equal accuracies do not hide one another
    acc["x"] = acc["commit_short"].map(order.index) + acc["provider"].map(lambda p: (names.index(p) - (len(names) - 1) / 2) * 0.08)
    grid = sns.relplot(data=acc, x="x", y="value", hue="provider", style="device", col="panel", col_wrap=3,
                       kind="line", marker="o", height=3, aspect=1.1, facet_kws={"sharey": False})
    grid.set(xlabel="commit", ylabel="accuracy", ylim=(0, 1.02))
    chance = {meta["task"]["task"]: meta["eval"].get("chance") for meta in _snapshot_metas(snapshot_dir)}
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
               "model": f"{m['architecture']} ({m['config']['name']}, {m.get('device', '?')}, lr {m['lr']:g})",
               "device": m.get("device", "?"), "step": p["step"], "loss": p["loss"], "ms/step": 1e3 * p["seconds_per_step"]}
              for m in metas for p in m.get("curve", [])]
    if not points:
        return _empty(out, "training", "no snapshots with a training curve yet (mfbench train)")
    frame = pd.DataFrame(points)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.lineplot(data=frame, x="step", y="loss", hue="model", style="task", ax=axes[0])
    sns.lineplot(data=frame, x="step", y="ms/step", hue="model", style="task", ax=axes[1], legend=False)
    axes[0].set_title("training loss (answer positions)")
    axes[1].set_title("wall time per step, per log interval")
    axes[1].set_yscale("log")
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
