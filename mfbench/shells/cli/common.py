"""What every command shares: one-line usage errors, the device and provider options, the results
table's preflight and rescue, and stopping on a signal."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd
import torch

from mfbench.bench.cases import DTYPES
from mfbench.core import providers
from mfbench.store import results


class UsageError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


def device(text: str) -> torch.device:
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UsageError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but torch sees no CUDA device on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {text!r}; use cpu, cuda or cuda:N")
    return dev


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def start_ranks(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """(device, rank, world size): this rank's device under torchrun with --distributed, else --device."""
    if not args.distributed:
        return device(args.device or default_device()), 0, 1
    from mfbench.shells import distributed

    try:
        dev = distributed.init("cpu" if (args.device or default_device()) == "cpu" else "cuda")
    except distributed.LaunchError as exc:
        raise UsageError(str(exc)) from None
    return (dev, *distributed.rank_and_world())


def dtype(name: str | None, dev: torch.device) -> torch.dtype:
    """--dtype, by default float16 on a GPU and float32 on the CPU."""
    name = name or ("float16" if dev.type == "cuda" else "float32")
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def provider_list(text: str | None, default: list[str]) -> list[str]:
    if not text:
        return default
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    for name in chosen:
        try:
            providers.get(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return chosen


def int_list(text: str | None, flag: str) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"{flag} takes whole numbers, e.g. {flag} 512,2048; got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} values must be positive, got {text!r}")
    return values


def ready_to_write(directory) -> None:
    """Refuse, before anything is measured, a result table that cannot be read or a directory that cannot
    take a write (read-only, a file, under a file)."""
    try:
        results.check_writable(directory)
        results.load(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def load(directory: str | None) -> pd.DataFrame:
    try:
        return results.load(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def append(rows: list[dict], directory):
    """results.append, and where the write fails after measuring (a full disk): the table is left as it
    was, and the rows go to a file of their own, named in the one-line error with how to append it later."""
    try:
        return results.append(rows, directory)
    except results.ResultsError as exc:
        rescue = Path(tempfile.gettempdir()) / f"mfbench-unsaved-{rows[0]['run_id'] if rows else 'rows'}.csv"
        try:
            pd.DataFrame(rows).to_csv(rescue, index=False)
        except OSError as again:
            raise UsageError(f"{exc}; the {len(rows)} rows measured could not be saved elsewhere either "
                             f"({again.strerror})") from None
        raise UsageError(f"{exc}; the {len(rows)} rows measured are in {rescue}: append them with "
                         f"python -c \"from mfbench.store import results; results.append(results.load('{rescue}'), "
                         f"'{directory}')\"") from None


def print_frame(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        print(frame.to_string(index=False))


def say(args: argparse.Namespace):
    """Progress: on stdout beside a table, on stderr where stdout is --format json or csv for a program."""
    stream = sys.stdout if getattr(args, "format", "table") == "table" else sys.stderr
    return lambda message: print(message, file=stream, flush=True)


def failed_exit(failed: list[str]) -> int:
    """1, saying which providers failed, where any did (raised, wrong shape, dtype or values, over budget)."""
    if not failed:
        return 0
    print(f"mfbench: failed: {', '.join(dict.fromkeys(failed))} (the reasons are in their rows)", file=sys.stderr)
    return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (CI cancelling a job, ``timeout``), raised where Ctrl-C would be so it is handled the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_terminated(signum, frame):
    raise Terminated(signum)


def catch_signals() -> dict:
    """SIGTERM raises ``Terminated`` while a command runs; returns the handlers of both signals to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signal.SIGINT: signal.getsignal(signal.SIGINT),
            signal.SIGTERM: signal.signal(signal.SIGTERM, raise_terminated)}


def stopped(exc: KeyboardInterrupt) -> int:
    """The signal that stopped a measuring command (SIGINT, or SIGTERM through ``Terminated``); from now on
    both are ignored, so a second Ctrl-C must not cost the rows being written."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    return getattr(exc, "signum", signal.SIGINT)
