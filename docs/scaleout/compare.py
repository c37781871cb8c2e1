"""Whole-command wall time of one matrix as one process, as one torchrun rank and as N torchrun ranks.

    python docs/scaleout/compare.py [--ranks 2] [--repeats 2] [--configs process,torchrun:1,torchrun:N]
                                    [--preset default] [--results-dir DIR] [-- more `mfbench run` arguments]

Each repeat runs every configuration once, in reversed order every other repeat so that a machine that
warms up or slows down over time does not favour one. A command is timed from launch to exit, which
includes what a rank's own rows cannot see: torchrun's agent, interpreter start-up and teardown. The
figure is appended to the run that the command wrote, as a ``command_wall_time`` row with that run's
id, commit, device and fingerprint, so the comparison can be redrawn from the result tables alone.
Last, each multi-rank run's time rows (and on a GPU its kernel_time rows) are set against the one-device
runs' (do they agree within noise?).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

from mfbench.store import results

WROTE = re.compile(r"wrote \d+ rows to .* \(run (\S+?)[,)]")


def world_of(config: str, ranks: int) -> int:
    """Ranks a configuration runs: process 1, torchrun:N ``ranks``, torchrun:<count> that count."""
    return 1 if config == "process" else ranks if config == "torchrun:N" else int(config.removeprefix("torchrun:"))


def command(config: str, ranks: int, preset: str, results_dir: str | None, extra: list[str]) -> list[str]:
    tail = ["run", "--preset", preset, *(["--results-dir", results_dir] if results_dir else []), *extra]
    if config == "process":
        return [sys.executable, "-m", "mfbench", *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(world_of(config, ranks)), "-m", "mfbench", tail[0], "--distributed", *tail[1:]]


def timed(cmd: list[str]) -> tuple[float, str | None, int]:
    """(launch-to-exit seconds, the run id the command wrote, exit code); its output passes through."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    run_id = None
    for line in proc.stdout:
        sys.stdout.write(line)
        found = WROTE.search(line)
        run_id = found.group(1) if found else run_id
    rc = proc.wait()
    return time.perf_counter() - start, run_id, rc


def record(run_id: str, config: str, ranks: int, preset: str, seconds: float, results_dir: str | None) -> None:
    frame = results.load(results_dir)
    mine = frame[frame["run_id"] == run_id]
    first = mine[~mine["flags"].str.contains(r"rank=[1-9]", regex=True)].iloc[0]  # rank 0's identity
    run = results.Run(run_id, first["time_utc"], first["commit"], bool(first["dirty"]), first["machine"],
                      first["device"], first["fingerprint"])
    params = {"launcher": config.split(":")[0], "ranks": world_of(config, ranks), "preset": preset}
    results.append([run.row("distributed", params, "-", "command_wall_time", seconds, "s",
                            flags=["launch-to-exit"])], results_dir)


def phases(frame, run_id: str, seconds: float) -> str | None:
    """Where a torchrun command's time went, from its ranks' own rows: set-up (first import of mfbench to
    first item), shard (first item to last) and what lies outside the ranks (torchrun's agent, interpreter
    start and teardown), from the result table ``frame``. None for a run without rank rows (a plain process)."""
    import json

    mine = frame[(frame["run_id"] == run_id) & frame["metric"].isin(["rank_setup_time", "rank_wall_time"])]
    if mine.empty:
        return None
    per_rank = mine.assign(rank=[json.loads(p)["rank"] for p in mine["params"]]).pivot_table(
        index="rank", columns="metric", values="value", aggfunc="first")
    if set(per_rank.columns) != {"rank_setup_time", "rank_wall_time"}:
        return None
    setup, shard = per_rank["rank_setup_time"], per_rank["rank_wall_time"]
    span = lambda v: f"{v.min():.1f}" if len(v) == 1 else f"{v.min():.1f}-{v.max():.1f}"  # noqa: E731
    return (f"set-up {span(setup)} s, shard {span(shard)} s, outside the ranks (torchrun's agent, interpreter "
            f"start and teardown) {seconds - (setup + shard).max():.1f} s")


def agreement(frame, run_ids: dict[str, list[str]], metric: str = "time") -> list[str]:
    """How each multi-rank run's ``metric`` rows compare with the one-device runs' (process and torchrun:1):
    the median and middle half of the ratios to their median, and how many fall inside their range. On a
    GPU ``kernel_time`` is the sharper test: it leaves out the host, whose speed moves between processes.
    ``frame`` is the result table."""
    import pandas as pd

    times = frame[(frame["metric"] == metric) & frame["value"].notna()]
    series = {rid: times[times["run_id"] == rid].set_index(["benchmark", "params", "provider"])["value"]
              for ids in run_ids.values() for rid in ids}
    single = [rid for c in ("process", "torchrun:1") for rid in run_ids.get(c, [])]
    if not single or times.empty:
        return []
    base = pd.concat([series[rid] for rid in single], axis=1, keys=single)
    low, high, mid = base.min(axis=1), base.max(axis=1), base.median(axis=1)
    lines = []
    if len(single) >= 3:  # the yardstick: how often one one-device run falls inside the others' range
        rest = [base.drop(columns=rid) for rid in single]
        held = [int(((base[rid] >= r.min(axis=1)) & (base[rid] <= r.max(axis=1))).sum()) for rid, r in zip(single, rest)]
        lines.append(f"{metric}: one-device runs, each against the other {len(single) - 1}: "
                     f"{', '.join(map(str, held))} of {len(base)} inside their range")
    for config, ids in run_ids.items():
        if config in ("process", "torchrun:1"):
            continue
        for rid in ids:
            mine = series[rid].reindex(base.index)
            ratio = (mine / mid).dropna()
            inside = int(((mine >= low) & (mine <= high)).sum())
            lines.append(f"{config} run {rid}: {metric} rows / one-device median: median {ratio.median():.3f}, middle half "
                         f"{ratio.quantile(0.25):.2f}-{ratio.quantile(0.75):.2f}; {inside} of {len(ratio)} inside "
                         f"the range of the {len(single)} one-device run(s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2, help="N of torchrun:N (default 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default="process,torchrun:1,torchrun:N")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--results-dir", default=None, help="default: the project's tables")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in ("process", "torchrun:N") and not re.fullmatch(r"torchrun:[1-9]\d*", c)]
    if bad or args.repeats < 1 or args.ranks < 1:
        parser.error(f"configs are process, torchrun:N or torchrun:<count>; repeats and ranks are positive (got {bad or args.repeats})")
    walls: dict[str, list[float]] = {c: [] for c in configs}
    run_ids: dict[str, list[str]] = {c: [] for c in configs}
    for rep in range(args.repeats):
        for config in configs if rep % 2 == 0 else configs[::-1]:
            print(f"== repeat {rep + 1}/{args.repeats}: {config}", flush=True)
            seconds, run_id, rc = timed(command(config, args.ranks, args.preset, args.results_dir, extra))
            if rc != 0 or run_id is None:
                print(f"compare: {config} exited {rc} without writing a run; stopping", file=sys.stderr)
                return rc or 1
            record(run_id, config, args.ranks, args.preset, seconds, args.results_dir)
            walls[config].append(seconds)
            run_ids[config].append(run_id)
            print(f"== {config}: {seconds:.1f} s launch to exit (run {run_id})", flush=True)
    median = {c: statistics.median(v) for c, v in walls.items()}
    print("\nconfiguration   median s   runs")
    for c in configs:
        print(f"{c:<15} {median[c]:>8.1f}   {', '.join(f'{v:.1f}' for v in walls[c])}")
    frame = results.load(args.results_dir)  # every run and its command_wall_time row is in by now
    for c in configs:
        for seconds, rid in zip(walls[c], run_ids[c]):
            where = phases(frame, rid, seconds)
            if where:
                print(f"{c} run {rid}: {where}")
    many = [c for c in configs if c != "process" and c != "torchrun:1"]
    for c in many:
        for base in ("process", "torchrun:1"):
            if base in median:
                print(f"{c} / {base}: {median[c] / median[base]:.2f}x")
    for metric in ("time", "kernel_time"):
        for line in agreement(frame, run_ids, metric):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
