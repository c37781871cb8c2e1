"""The end of `nox -s bench`: MemoryFormer against dense per case, read from the run's own rows, and where
the dashboard and the plots are. asv's duration table and the list of written files come before it.

    python -m mfbench.report.bench_summary [--run RUN] [--results-dir DIR]

RUN: any unique part of a run id; default: the newest run that holds asv values (a bench run).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from mfbench.bench.cases import BENCHMARKS
from mfbench.bench.measurement import BELOW_FLOOR
from mfbench.core import providers
from mfbench.report.summaries import provider_order
from mfbench.store import results


def bench_run(rows: pd.DataFrame, run: str | None = None) -> str | None:
    """The run id to summarise: the one ``run`` names (a unique part of it), else the newest run holding
    asv values; None if there is none."""
    if rows.empty:
        return None
    if run:
        ids = [i for i in rows["run_id"].unique() if run in i]
        if len(ids) != 1:
            raise ValueError(f"{run!r} names {len(ids)} runs; give a unique part of one run id")
        return ids[0]
    benched = rows[rows["benchmark"].str.startswith("asv:")]
    return None if benched.empty else str(benched.sort_values("time_utc")["run_id"].iloc[-1])


def _seconds(value: float) -> str:
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _times(rows: pd.DataFrame) -> pd.DataFrame:
    """A run's runner time rows, with the case's parameters as columns and ``bound`` for a host-bound time."""
    # the runner's rows behind the asv suites, one per measurement
    times = rows[rows["benchmark"].isin(BENCHMARKS) & (rows["metric"] == "time")].dropna(subset=["value"])
    if times.empty:
        return times
    params = pd.DataFrame([json.loads(p) for p in times["params"]], index=times.index)
    flags = times["flags"].fillna("").str.split(",")
    return times.assign(direction=params["direction"].map(results.short_direction), seq=params["seq"],
                        d=params["d"], dtype=params["dtype"], bound=flags.map(lambda f: "host-bound" in f),
                        impossible=flags.map(lambda f: BELOW_FLOOR in f))


def comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per case of one run's rows (device, benchmark, direction, tokens, width, dtype): dense's
    median time, then each lookup provider's time and its ratio to dense (above 1: dense is faster); a
    host-bound time is starred."""
    return _comparison(_times(rows))


def _comparison(times: pd.DataFrame) -> pd.DataFrame:
    if times.empty:
        return pd.DataFrame()
    names = provider_order(times["provider"].unique())  # the plots' legend order
    dense = next((n for n in names if providers.is_baseline(n)), None)
    lookups = [n for n in names if not providers.is_baseline(n)]
    lines = []
    for (device, bench, direction, seq, d, dtype), case in times.groupby(
            ["device", "benchmark", "direction", "seq", "d", "dtype"], sort=True):
        by = case.set_index("provider")
        base = float(by.loc[dense, "value"]) if dense in by.index else math.nan
        line = {"device": device, "case": f"{bench} {direction} s={seq} d={d} {dtype}", dense or "dense": _cell(by, dense)}
        for name in lookups:
            ratio = float(by.loc[name, "value"]) / base if name in by.index else math.nan
            line[name] = _cell(by, name) + ("" if math.isnan(ratio) else f" (x{ratio:.2f})")
        lines.append(line)
    return pd.DataFrame(lines)


def _cell(by: pd.DataFrame, name: str | None) -> str:
    if name not in by.index:
        return "-"
    return (_seconds(float(by.loc[name, "value"])) + ("*" if by.loc[name, "bound"] else "")
            + (" IMPOSSIBLE" if by.loc[name, "impossible"] else ""))


def text(rows: pd.DataFrame, run_id: str | None, html_dir: Path, plots_dir: Path) -> str:
    """The summary as printed: the comparison of run ``run_id``, then where to look next."""
    out = []
    mine = rows[rows["run_id"] == run_id] if run_id else rows.iloc[0:0]
    times = _times(mine)
    table = _comparison(times)
    if run_id is None:
        out.append("No bench run in the result tables yet.")
    elif table.empty:
        out.append(f"Run {run_id} holds no layer, block or model times to compare with dense.")
    else:
        out.append(f"MemoryFormer against dense, run {run_id} at {mine['commit'].iloc[0][:10]}: the runner's median "
                   "time per call (asv tracks it as *Metrics.track_median_time; asv's time_call lines above time the "
                   "same call with asv's own timer and few samples, and can differ); xN: the lookup's time over "
                   "dense's, above 1 dense is faster:")
        for device, part in table.groupby("device", sort=False):
            out.append(f"{device}\n" + part.drop(columns="device").set_index("case").rename_axis(None).to_string())
        if times["bound"].any():
            out.append("*: host-bound, the time is the host's issue time, not the device's")
        if times["impossible"].any():
            out.append(f"IMPOSSIBLE: below its floor ({BELOW_FLOOR}): the ceilings were measured too low on this "
                       "machine; measure them again with --refresh-ceilings on an idle machine")
    html_dir, plots_dir = _shown(html_dir), _shown(plots_dir)
    index = html_dir / "index.html"
    out.append(f"Dashboard: {index if index.exists() else str(html_dir) + ' (not published yet: nox -s publish)'}"
               f"; serve it with `python -m mfbench.report.dashboard serve {html_dir}`")
    drawn = sorted(plots_dir.glob("*.png"))
    out.append(f"Plots: {plots_dir} ({', '.join(p.name for p in drawn) if drawn else 'none drawn yet: nox -s plots'})")
    out += tree_changes(html_dir.parent)
    return "\n".join(out)


def tree_changes(directory: Path) -> list[str]:
    """What the bench changed in a git checkout's ``directory`` (results/, tracked: the tables, plots and asv
    results are versioned) and how to keep or discard it; nothing outside a checkout or when it is clean."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--", "."], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    paths = [line[3:] for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
    if not paths:
        return []
    shown = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
    where = _shown(directory)
    return [f"Changed in this checkout (git status {where}): {shown}",
            f"keep them: git add {where} && git commit -m 'bench results'; discard them: git restore {where} "
            f"(and git clean -nd {where} lists the new files, which -fd removes)"]


def _shown(path: Path) -> Path:
    """``path`` as the person at the terminal would type it: relative to where they are, if it is below it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.report.bench_summary", description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a unique part of the run id (default: the newest bench run)")
    parser.add_argument("--results-dir", type=Path, help="result tables (default: the project's)")
    args = parser.parse_args(argv)
    directory = args.results_dir or results.project_dir()
    try:
        rows = results.load(directory)
        run_id = bench_run(rows, args.run)
    except (results.ResultsError, ValueError) as exc:
        print(f"mfbench: error: {exc}")
        return 2
    print(text(rows, run_id, directory / "html", directory / "plots"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
