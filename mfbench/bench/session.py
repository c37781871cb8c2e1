"""A measuring command from plan to stored rows: ``run`` (``mfbench run``: a preset's matrix, shared over
ranks where asked, its clock locked where asked) and ``kernels`` (``mfbench layers``/``bench``: layer-kernel
items checked against float64), both through ``collect`` (the matrix, its rows kept as they come) and ``save``
(the rows appended, or rescued to a file of their own). The command line only parses and prints."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from mfbench.bench import cases, runner
from mfbench.bench.measure import Bench
from mfbench.bench.measurement import Measurement, merge, record, to_rows
from mfbench.config import settings
from mfbench.core import signals
from mfbench.core.model import ModelConfig
from mfbench.instruments import ceilings
from mfbench.store import results


class Refused(Exception):
    """What was asked cannot be done here (a usage or environment problem), found before measuring."""


@dataclass
class Collected:
    """What a measuring command kept: the measurements, their rows (the machine's first), the signal that
    stopped it (0 where it ran to the end) and where the rows went."""

    measurements: list[Measurement] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    stopped_by: int = 0
    path: Path | None = None


def collect(items, bench: Bench, run: results.Run, progress: Callable[[str], None], lock=None, tag: str = "") -> Collected:
    """Run the matrix, keeping each measurement's rows as it comes; a signal (Ctrl-C, SIGTERM, SIGHUP) or a
    reader that went away keeps what was measured, flagged partial."""
    got = Collected(rows=bench.machine_rows(run))
    try:
        with lock.held() if lock else contextlib.nullcontext():
            for m in runner.run_matrix(items, bench, progress):
                got.measurements.append(m)
                got.rows += to_rows(m, run)
                signals.raise_pending()  # a signal a plugin swallowed still stops the run
    except (KeyboardInterrupt, BrokenPipeError) as exc:
        got.stopped_by = signals.stopped(exc)
        name = signal.Signals(got.stopped_by).name
        results.mark_partial(got.rows, f"interrupted:{name}")
        why = f"interrupted by {name}" if isinstance(exc, KeyboardInterrupt) else "the reader of the output went away"
        signals.tell(f"{tag}{why}: keeping the {len(got.rows)} rows measured so far, flagged {results.PARTIAL}")
    return got


def ready_to_write(directory) -> Path:
    """Refuse, before anything is measured, a result table that cannot be read or a directory that cannot
    take a write (read-only, a file, under a file): a ResultsError."""
    directory = results.check_writable(directory)
    results.load(directory)
    return directory


def rescue(rows: list[dict]) -> Path:
    """The rows in a CSV file of their own (the table could not take them); OSError where that fails too."""
    path = Path(tempfile.gettempdir()) / f"mfbench-unsaved-{rows[0]['run_id'] if rows else 'rows'}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _how_to_append(path: Path, directory) -> str:
    return (f"append them with python -c \"from mfbench.store import results; results.append(results.load('{path}'), "
            f"'{directory}')\"")


def save(rows: list[dict], directory) -> Path:
    """results.append, the rows never lost: where the table is locked by another process, say so and wait
    (``MFBENCH_LOCK_WAIT_S``); a signal while waiting, the wait running out, or a write that fails (a full
    disk) leaves the table as it was and puts the rows in a file of their own, named with how to append it
    later. A signal during the write itself waits for the write, then stops."""
    if not rows:
        return Path(directory) / results.TABLE
    _wait_for_lock(Path(directory), rows)
    try:
        with signals.held() as arrived:
            path = results.append(rows, directory)
    except results.ResultsError as exc:
        raise results.ResultsError(f"{exc}; {_rescued(rows, directory)}") from None
    if arrived:
        signals.tell(f"mfbench: {signal.Signals(arrived[0]).name} arrived while the {len(rows)} rows were written "
                     f"to {path}: they were, and the command stops")
        raise signals.Signalled(arrived[0])
    return path


def _rescued(rows: list[dict], directory) -> str:
    """The rows in a file of their own, said: where they are and how to append them, or why they are not."""
    try:
        path = rescue(rows)
    except OSError as again:
        return f"the {len(rows)} rows measured could not be saved elsewhere either ({again.strerror})"
    return f"the {len(rows)} rows measured are in {path}: {_how_to_append(path, directory)}"


LOCK = ".lock"  # the writers' lock of a results directory (store.results takes it around each append)


def _wait_for_lock(directory: Path, rows: list[dict]) -> None:
    """Return once no other process holds the results directory's lock, having said on stderr that it
    waits; a ResultsError when the wait runs out, the rows rescued (a signal: rescued, and it goes on)."""
    try:
        handle = open(directory / LOCK, "a+")
    except OSError:
        return  # results.append names what is wrong with the directory
    limit = settings().lock_wait_s
    with handle:
        if _lock_free(handle):
            return
        signals.tell(f"mfbench: the result tables in {directory} are locked by another process; waiting up to "
                     f"{limit:g} s for it (MFBENCH_LOCK_WAIT_S)")
        end = time.monotonic() + limit
        try:
            while time.monotonic() < end:
                time.sleep(min(0.1, max(0.0, end - time.monotonic())))
                if _lock_free(handle):
                    return
        except KeyboardInterrupt as exc:
            name = signal.Signals(signals.stopped(exc)).name
            signals.tell(f"mfbench: interrupted by {name} while waiting for the lock; {_rescued(rows, directory)}")
            raise
    raise results.ResultsError(f"the result tables in {directory} stayed locked by another process for {limit:g} s; "
                               f"{_rescued(rows, directory)}")


def _lock_free(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(handle, fcntl.LOCK_UN)  # results.append takes it again for its write
    return True


def measured_ceilings(dev: torch.device, refresh: bool, say: Callable[[str], None]):
    say(f"measuring the ceilings of {dev} (cached after the first run) ...")
    ceil = ceilings.ceilings(dev, refresh=refresh)
    onchip = f"{ceil.onchip_bytes_per_s / 1e12:.1f} TB/s" if ceil.onchip_bytes_per_s else "n/a"
    say(f"ceilings: copy {ceil.copy_bytes_per_s / 1e9:.1f} GB/s, matmul "
        f"{ceil.matmul_flops_per_s / 1e12:.1f} TFLOP/s ({ceil.matmul_dtype}), on-chip {onchip}")
    return ceil


def kernels(items: list, dev: torch.device, say: Callable[[str], None], *, directory=None, csv: str | None = None,
            check: bool = True, refresh_ceilings: bool = False) -> tuple[Collected, pd.DataFrame]:
    """``mfbench layers``: layer-kernel items measured (float64-checked first where ``check``), their rows
    appended in ``directory`` (None: nowhere) and their flat records written to ``csv``; returns what was
    collected and the records. Both places are checked before anything is measured."""
    if directory is not None:
        ready_to_write(directory)
    if csv:
        writable_file(csv)
    bench = Bench(dev, measured_ceilings(dev, refresh_ceilings, say), energy_seconds=0.0, check=check)
    got = collect(items, bench, results.Run.start(str(dev)), say)
    records = pd.DataFrame([record(m) for m in merge(got.measurements)])
    if directory is not None and got.rows:
        got.path = save(got.rows, directory)
        say(f"wrote {len(got.rows)} rows to {got.path}")
        if got.stopped_by == signal.SIGPIPE:  # stdout is gone: where the rows went is said where it can be read
            signals.tell(f"mfbench: wrote {len(got.rows)} rows to {got.path}")
    if csv:
        try:
            records.to_csv(csv, index=False)
        except OSError as exc:
            kept = f"the rows are in {got.path}" if got.path else _rescued(got.rows, directory or results.project_dir())
            raise Refused(f"could not write the CSV file {csv} ({exc.strerror or exc}); {kept}") from None
        say(f"wrote {len(records)} records to {csv}")
    return got, records


def writable_file(path) -> None:
    """Refuse, before measuring, a file that cannot be written: a directory, under a missing directory or a
    file, or without permission."""
    target = Path(path)
    if target.is_dir():
        raise Refused(f"the CSV file {path} is a directory")
    if not target.parent.is_dir():
        what = "is not a directory" if target.parent.exists() else "does not exist"
        raise Refused(f"cannot write the CSV file {path}: {target.parent} {what}")
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        raise Refused(f"cannot write the CSV file {path}: permission denied")


@dataclass(frozen=True)
class RunPlan:
    """What ``mfbench run`` was asked, parsed: the preset's name, the device (cpu, cuda, cuda:N), the
    providers, lengths (None: the preset's), dtype, benchmarks (None:
    all), weighting, results directory, and the options of a distributed run and a locked clock."""

    preset: str
    device: str
    providers: list[str]
    seqs: list[int] | None
    dtype: torch.dtype
    benchmarks: list[str] | None
    weighting: str
    directory: Path
    refresh_ceilings: bool = False
    distributed: bool = False
    schedule: str = "dynamic"
    lock_clocks: int | None = None


def start_ranks(device: str, distributed: bool) -> tuple[torch.device, int, int]:
    """(device, rank, world size): this rank's device under torchrun with ``distributed``, else ``device``."""
    if not distributed:
        return torch.device(device), 0, 1
    from mfbench.bench import ranks

    try:
        dev = ranks.init("cpu" if device == "cpu" else "cuda")
    except ranks.LaunchError as exc:
        raise Refused(str(exc)) from None
    return (dev, *ranks.rank_and_world())


def run(plan: RunPlan) -> Collected | None:
    """``mfbench run``: the preset's items planned, this rank's share of them measured, and the run's rows
    appended (on rank 0 of a distributed run; None on the other ranks, whose rows rank 0 writes)."""
    preset = cases.PRESETS[plan.preset]
    dev, rank, world = start_ranks(plan.device, plan.distributed)
    items = cases.plan(preset, dev, plan.providers, plan.seqs, plan.dtype, plan.benchmarks, plan.weighting)
    if rank == 0:
        ready_to_write(plan.directory)
        warn_long(preset, items, dev)
    share = _share(plan, items, dev)
    run, items, tag = (share.run, share.items, share.tag) if share else (results.Run.start(str(dev)), items, "")
    count = len(items) if isinstance(items, list) else "its share of the"
    kind = "cuda" if dev.type == "cuda" else "cpu"
    what = (f"model config {preset.model}, d={ModelConfig.preset(preset.model).d_model}" if preset.decode is None else
            f"layer widths {', '.join(map(str, preset.decode.widths[kind]))}, "
            f"models {', '.join(preset.decode.models[kind])}")
    print(f"{tag}run {run.run_id} on {run.device}, commit {run.commit[:10]}{'+dirty' if run.dirty else ''}: "
          f"{count} measurements, preset {plan.preset} ({what}), {str(plan.dtype).removeprefix('torch.')}",
          flush=True)
    lock = clock_lock(plan.lock_clocks, dev)
    bench = Bench.start(dev, ceilings.ceilings(dev, refresh=plan.refresh_ceilings), preset.energy_seconds, check=True)
    if share:
        share.begin(dev)
    got = collect(items, bench, run, lambda msg: print(tag + msg, flush=True), lock, tag)
    if lock:
        lock_flags(got.rows, lock, plan.lock_clocks, tag)
    if share:
        got.rows = share.finish(got.rows)
        if got.rows is None:  # this rank's rows went to rank 0, which writes the run
            return None
    got.path = save(got.rows, plan.directory)
    wrote = (f"wrote {len(got.rows)} rows to {got.path} (run {run.run_id}{f', {world} ranks' if world > 1 else ''}"
             f"{', partial' if got.stopped_by else ''})")
    signals.say(wrote)
    if got.stopped_by == signal.SIGPIPE:  # stdout is gone: where the rows went is said where it can be read
        signals.tell(f"mfbench: {wrote}")
    return got


def _share(plan: RunPlan, items: list, dev: torch.device):
    """This rank's share of a distributed run (one rank too: the same matrix and rows as any world size)."""
    if not plan.distributed:
        return None
    from mfbench.bench import ranks

    return ranks.Share.start(items, dev, plan.schedule)


def clock_lock(mhz: int | None, dev: torch.device):
    """``--lock-clocks MHZ``: a ClockLock for the run (None without the option)."""
    if not mhz:
        return None
    if dev.type != "cuda":
        raise Refused("--lock-clocks fixes a GPU's SM clock: this run is on the CPU")
    if mhz < 1:
        raise Refused(f"--lock-clocks takes a clock in MHz, got {mhz}")
    from mfbench.instruments.gpustate import ClockLock

    return ClockLock(dev, mhz)


def lock_flags(rows: list[dict], lock, mhz: int, tag: str) -> None:
    results.add_flags(rows, lock.flag)
    if lock.refused:
        print(f"{tag}--lock-clocks {mhz}: not permitted here ({lock.refused}); measured at the "
              "GPU's own clocks, rows flagged clock-lock-refused", file=sys.stderr)


def warn_long(preset: cases.Preset, items: list, dev: torch.device) -> None:
    """Before a matrix with lengths beyond the preset's own for this device: how much longer it is, and an
    estimate of its cost relative to the preset's matrix (cost_estimate grows linearly with the length;
    attention grows quadratically, so this is a lower bound)."""
    usual = preset.seqs["cuda" if dev.type == "cuda" else "cpu"]
    longest = max((item.seq for item in items), default=0)
    if longest <= max(usual):
        return
    own = [replace(item, seq=s) for item in dict.fromkeys(replace(i, seq=0) for i in items) for s in usual]
    cost = sum(cases.cost_estimate(item, dev) for item in items)
    base = sum(cases.cost_estimate(item, dev) for item in own) or 1.0
    print(f"warning: --seq {longest} is {longest / max(usual):.0f}x the longest length this preset measures on "
          f"{dev.type} ({max(usual)}); the matrix is estimated at {cost / base:.0f}x or more of the preset's own "
          "time, and a single item may run for minutes without output (Ctrl-C keeps the rows measured so far)",
          file=sys.stderr, flush=True)
