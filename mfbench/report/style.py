"""What every plot of the result tables shares: the runner rows in wide form, one colour per provider in
every figure, legends that never cover data, titles that state the shape, and byte-stable files."""

from __future__ import annotations

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

from mfbench.bench.cases import BENCHMARKS  # noqa: E402
from mfbench.core import providers  # noqa: E402
from mfbench.report.summaries import builtin_names, provider_order  # noqa: E402  (no plotting inside)


def expand(frame: pd.DataFrame) -> pd.DataFrame:
    """Runner rows with their params as columns, newest run per (device, commit, measurement) kept."""
    frame = frame[frame["benchmark"].isin(BENCHMARKS)].copy()
    if frame.empty:
        return frame
    params = pd.DataFrame([json.loads(p) for p in frame["params"]], index=frame.index)
    frame = pd.concat([frame, params[["seq", "direction", "d", "dtype"]]], axis=1)
    frame["commit_short"] = frame["commit"].str[:8] + np.where(frame["dirty"], "+", "")
    return frame


def to_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement, a column per metric, and ``host_bound``: its time is the host's."""
    if frame.empty:
        return pd.DataFrame()
    keys = ["run_id", "time_utc", "device", "commit_short", "benchmark", "direction", "seq", "d", "dtype", "provider"]
    wide = frame.pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    times = frame[frame["metric"] == "time"].set_index(keys)["flags"]
    bound = times.str.split(",").map(lambda flags: "host-bound" in flags)
    wide["host_bound"] = bound.groupby(level=keys).any().reindex(wide.index, fill_value=False).astype(bool)
    return wide.reset_index()


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    # No date and fixed SVG ids: the same rows redraw byte-identical files, so a commit of plots is a diff of data.
    with plt.rc_context({"svg.hashsalt": "mfbench"}):
        for path in paths:
            meta = {"Date": None} if path.suffix == ".svg" else {"Software": None}
            fig.savefig(path, dpi=110, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return paths


def empty_plot(out: Path, name: str, message: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return save(fig, out, name)


# --- one colour per provider, in every figure ------------------------------------------------------------

BASELINE_COLOUR = "#404040"  # the dense baseline: dark grey, so every lookup provider is read against it
# The built-in lookups in registry order take tab10's colours (its grey left out: that is the baseline's);
# any other name (a plugin, a provider of old rows) takes a tab20b colour chosen by a hash of its name, so it
# keeps that colour whichever other providers a figure shows.
_LOOKUP_COLOURS = [c for i, c in enumerate(sns.color_palette("tab10")) if i != 7]
_OTHER_COLOURS = sns.color_palette("tab20b")


def provider_colour(name: str) -> str | tuple:
    """The colour ``name`` has in every plot: fixed by the registry, not by which providers a plot holds."""
    builtins = builtin_names()
    if name in builtins:
        if providers.get(name).baseline:
            return BASELINE_COLOUR
        lookups = [n for n in builtins if not providers.get(n).baseline]
        return _LOOKUP_COLOURS[lookups.index(name) % len(_LOOKUP_COLOURS)]
    return _OTHER_COLOURS[zlib.crc32(name.encode()) % len(_OTHER_COLOURS)]


def hue_args(frame: pd.DataFrame) -> dict:
    """seaborn's hue arguments for a frame's providers: the fixed colours and the registry order."""
    order = provider_order(frame["provider"].unique())
    return {"hue": "provider", "hue_order": order, "palette": {n: provider_colour(n) for n in order}}


def values(column: pd.Series) -> str:
    """A column's distinct values for a title: '512' or '512/2048'."""
    return "/".join(str(v) for v in sorted(column.dropna().unique()))


def shape(frame: pd.DataFrame) -> str:
    """The width and dtype of a panel's measurements, for its title (tokens are on the x axis or in the label)."""
    return f"d={values(frame['d'])}, {values(frame['dtype'])}"


def legend_below(fig: plt.Figure, handles: list, labels: list[str] | None = None, ncol: int = 6) -> None:
    """One legend for the whole figure, under it: never over a panel's data."""
    labels = labels if labels is not None else [h.get_label() for h in handles]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), ncol),
               fontsize=8, frameon=False)


def provider_handles(names) -> list[Line2D]:
    return [Line2D([], [], color=provider_colour(n), marker="o", label=n) for n in provider_order(names)]

