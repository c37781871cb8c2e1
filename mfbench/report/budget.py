"""Accuracy at equal time and equal energy, from the ``budget:TASK`` rows of ``mfbench train --budget-*``.

``points`` gathers each budgeted training's points (one line per device, task, budget, architecture, seed
and fraction); ``verdict`` says which architecture reaches higher accuracy at one fraction, and says that
the seed ranges overlap where they do; ``table`` renders the full-budget verdicts as the README's findings
carry them (``python -m mfbench.report.findings budget``); ``plot`` draws accuracy against seconds and
against joules spent per device and task (median over seeds, their range as bars, each seed a dot).
``seed_table`` gives the seed spread of the fixed-step trainings behind the snapshot accuracies the docs
quote (``python -m mfbench.report.findings seeds``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

METRICS = ("accuracy", "seconds_spent", "joules_spent", "cpu_seconds_spent", "steps")
AXES = {"seconds": ("seconds_spent", "seconds of training (evaluation left out)"),
        "joules": ("joules_spent", "joules of training, net of idle (evaluation left out)")}
ARCHITECTURES = ("memoryformer", "dense")


def points(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (device, task, budget kind, architecture, provider, seed, fraction): the metrics as
    columns. Per device, task and budget kind one budget and preset is kept: the one trained over the most
    seeds, the newest of those (a one-seed tracking run, such as asv's budget suite makes, does not displace
    a study over seeds), and of each point its newest measurement."""
    rows = rows[rows["benchmark"].str.startswith("budget:") & rows["metric"].isin(METRICS)]
    columns = ["device", "task", "kind", "budget", "unit", "preset", "architecture", "provider", "seed",
               "fraction", "run_id", "commit", "time_utc", "flags", *METRICS]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    params = pd.DataFrame([json.loads(p) for p in rows["params"]], index=rows.index)
    frame = rows.assign(task=rows["benchmark"].str.removeprefix("budget:"), kind=params["budget_kind"],
                        budget=params["budget"], unit=params["budget_unit"], preset=params["preset"],
                        architecture=params["architecture"], seed=params["seed"], fraction=params["fraction"])
    frame = frame.sort_values("time_utc", kind="stable")
    chosen = ["device", "task", "kind", "budget", "preset"]
    studies = frame.groupby(chosen, sort=False).agg(seeds=("seed", "nunique"), newest=("time_utc", "max")).reset_index()
    kept = studies.sort_values(["seeds", "newest"], kind="stable").groupby(chosen[:3]).tail(1)[chosen]
    frame = frame.merge(kept, on=chosen).sort_values("time_utc", kind="stable")
    keys = ["device", "task", "kind", "budget", "unit", "preset", "architecture", "provider", "seed", "fraction"]
    frame = frame.drop_duplicates([*keys, "metric"], keep="last")
    wide = frame.set_index([*keys, "metric"])["value"].unstack("metric")  # NaN (no meter) kept
    info = frame.groupby(keys)[["run_id", "commit", "time_utc", "flags"]].last()
    wide = wide.join(info).reset_index().dropna(subset=["run_id"])
    return wide.reindex(columns=columns)


def fastest_memoryformer(pts: pd.DataFrame) -> str | None:
    """The MemoryFormer provider that took the most steps in its full budget (median over seeds): where
    rows hold several, the fastest one is the one a user would train with."""
    mf = pts[(pts["architecture"] == "memoryformer") & (pts["fraction"] == 1.0)]
    if mf.empty:
        return None
    return mf.groupby("provider")["steps"].median().idxmax()


def verdict(memoryformer: list[float], dense: list[float]) -> str:
    """Which reaches higher accuracy over the seeds: a side wins only where its worst seed beats the other
    side's best; otherwise the ranges overlap and the words say so."""
    if len(memoryformer) < 2 or len(dense) < 2:
        return "fewer than 2 seeds a side: no verdict"
    if min(memoryformer) > max(dense):
        return "MemoryFormer higher (seed ranges apart)"
    if min(dense) > max(memoryformer):
        return "dense higher (seed ranges apart)"
    return "seed ranges overlap: neither is higher"


def _spread(values: pd.Series) -> str:
    return f"{values.median():.3f} [{values.min():.3f}, {values.max():.3f}]"


def _pair(a: pd.Series, b: pd.Series, fmt: str) -> str:
    return f"{fmt.format(a.median())} / {fmt.format(b.median())}" if len(a) and len(b) else "-"


def _load(flags: pd.Series) -> str:
    found = [float(v) for f in flags for pair in re.findall(r"load-1min=(\d+\.\d+)\.\.(\d+\.\d+)", f) for v in pair]
    return f"{min(found):.1f}-{max(found):.1f}" if found else "?"


def table(rows: pd.DataFrame, fractions=(1.0,)) -> str:
    """The verdict per device, task and budget kind at ``fractions`` of the budget (default: all of it),
    MemoryFormer through its fastest provider on that device: median accuracy [min, max] over the seeds."""
    pts = points(rows)
    if pts.empty:
        return "no budget rows (mfbench train --budget-seconds or --budget-joules)\n"
    head = ["device", "task", "at equal", "seeds", "MemoryFormer", "dense", "steps (MemoryFormer / dense)",
            "CPU s (MemoryFormer / dense)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    used = []
    for (device, task, kind), group in pts.groupby(["device", "task", "kind"], sort=True):
        provider = fastest_memoryformer(group)
        mine = group[(group["architecture"] == "dense") | (group["provider"] == provider)]
        used.append(mine)
        for fraction in fractions:
            at = mine[mine["fraction"] == fraction]
            mf, dense = at[at["architecture"] == "memoryformer"], at[at["architecture"] == "dense"]
            budget = group["budget"].iloc[0] * fraction
            what = f"{'time' if kind == 'seconds' else 'energy'}, {budget:g} {group['unit'].iloc[0]}"
            if fraction != 1.0:
                what += f" ({fraction:g} of the budget)"
            seeds = f"{len(mf)} / {len(dense)}"
            cells = [device, f"{task} ({group['preset'].iloc[0]})", what, seeds,
                     f"{provider}: {_spread(mf['accuracy'])}" if len(mf) else "-",
                     _spread(dense["accuracy"]) if len(dense) else "-",
                     _pair(mf["steps"], dense["steps"], "{:.0f}"), _pair(mf["cpu_seconds_spent"], dense["cpu_seconds_spent"], "{:.3g}"),
                     verdict(list(mf["accuracy"]), list(dense["accuracy"]))]
            lines.append("| " + " | ".join(cells) + " |")
    used = pd.concat(used)
    runs = ", ".join(f"`{r}` ({c[:7]})" for r, c in used[["run_id", "commit"]].drop_duplicates().itertuples(index=False))
    return ("\n".join(lines) + "\n\nAccuracy: median [min, max] over the seeds; steps and the process's CPU seconds: median. Host load "
            f"(1-minute average) at the trainings' starts and ends: {_load(used['flags'])}. Runs {runs}.\n")


def _provider_colour(name: str):
    from mfbench.report.style import provider_colour

    return provider_colour(name)


def plot(rows: pd.DataFrame, out: Path) -> list[Path]:
    """``budget_<device>_<task>``: accuracy against seconds and against joules spent, per device and task."""
    import matplotlib.pyplot as plt

    from mfbench.report.style import empty_plot, legend_below, save

    pts = points(rows)
    if pts.empty:
        return empty_plot(out, "budget", "no budget rows yet (mfbench train --budget-seconds / --budget-joules)")
    paths = []
    for (device, task), group in pts.groupby(["device", "task"], sort=True):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        handles = {}
        for ax, kind in zip(axes, AXES):
            x, label = AXES[kind]
            mine = group[group["kind"] == kind]
            provider = fastest_memoryformer(mine)
            mine = mine[(mine["architecture"] == "dense") | (mine["provider"] == provider)]
            if mine.empty or mine[x].isna().all():
                ax.axis("off")
                ax.text(0.5, 0.5, f"no {kind} budget rows on {device}" + (" (no energy meter)" if kind == "joules" else ""),
                        ha="center", va="center")
                continue
            for arch in ARCHITECTURES:
                a = mine[mine["architecture"] == arch]
                if a.empty:
                    continue
                name = a["provider"].iloc[0]
                colour = _provider_colour(name)
                ax.scatter(a[x], a["accuracy"], color=colour, alpha=0.35, s=12)
                by = a.groupby("fraction")
                med = by[[x, "accuracy"]].median()
                low, high = by["accuracy"].min(), by["accuracy"].max()
                line = ax.errorbar(med[x], med["accuracy"], yerr=[med["accuracy"] - low, high - med["accuracy"]],
                                   color=colour, marker="o", capsize=3)
                handles[f"{arch} ({name})"] = line
            chance = json.loads(rows[rows["benchmark"] == f"budget:{task}"]["params"].iloc[-1])["chance"]
            ax.axhline(chance, color="grey", ls=":", lw=1)
            ax.set(xlabel=label, ylabel="accuracy", ylim=(0, 1.02),
                   title=f"at equal {'time' if kind == 'seconds' else 'energy'}: {mine['budget'].iloc[0]:g} "
                         f"{mine['unit'].iloc[0]}, {mine['seed'].nunique()} seeds")
        fig.suptitle(f"{task} ({group['preset'].iloc[0]}) on {device}: median over seeds, bars their range, "
                     "dots each seed, dotted chance", y=1.02)
        fig.tight_layout()
        legend_below(fig, list(handles.values()), list(handles))
        paths += save(fig, out, f"budget_{re.sub(r'[^A-Za-z0-9.-]+', '-', device)}_{task}")
    return paths


def seed_table(rows: pd.DataFrame) -> str:
    """Per device, task, preset, step count and provider: the accuracy of ``mfbench train`` (a fixed number
    of steps) over the seeds in the rows, the newest row of each seed: how far one training is from another."""
    acc = rows[rows["benchmark"].str.startswith("train:") & (rows["metric"] == "accuracy")]
    if acc.empty:
        return "no train rows (mfbench train)\n"
    params = pd.DataFrame([json.loads(p) for p in acc["params"]], index=acc.index)
    acc = acc.assign(task=acc["benchmark"].str.removeprefix("train:"), preset=params["preset"],
                     steps=params["steps"], seed=params["seed"]).sort_values("time_utc", kind="stable")
    keys = ["device", "task", "preset", "steps", "provider"]
    acc = acc.drop_duplicates([*keys, "seed"], keep="last")
    head = ["device", "task", "preset, steps", "provider", "seeds", "accuracy", "commits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (device, task, preset, steps, provider), g in acc.groupby(keys, sort=True):
        spread = f"{g['value'].iloc[0]:.3f} (one seed: no spread measured)" if len(g) == 1 else _spread(g["value"])
        lines.append(f"| {device} | {task} | {preset}, {steps} | {provider} | "
                     f"{', '.join(str(s) for s in sorted(g['seed']))} | {spread} | "
                     f"{', '.join(sorted({c[:7] for c in g['commit']}))} |")
    return "\n".join(lines) + "\n\nAccuracy: median [min, max] over the seeds, each seed's newest row.\n"
