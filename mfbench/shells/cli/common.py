"""What every command shares: one-line usage errors, the device and provider options, and the results
table's preflight and rescue."""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from mfbench.bench import session
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
    try:
        return session.start_ranks(args.device or default_device(), True)
    except session.Refused as exc:
        raise UsageError(str(exc)) from None


def dtype(name: str | None, dev: torch.device) -> torch.dtype:
    """--dtype, by default float16 on a GPU and float32 on the CPU."""
    name = name or ("float16" if dev.type == "cuda" else "float32")
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def provider_list(text: str | None, default: list[str]) -> list[str]:
    """The providers named (None: ``default``); naming none, or one twice, is a mistake."""
    if text is None:
        return default
    chosen = names_once(text, "--providers", "provider")
    for name in chosen:
        try:
            providers.get(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return chosen


def names_once(text: str, flag: str, what: str) -> list[str]:
    """The comma-separated names of ``text``: at least one, none twice."""
    chosen = [p.strip() for p in text.split(",")]
    if not any(chosen):
        raise UsageError(f"{flag} {text!r} names no {what}; give a comma-separated list, or leave {flag} out for all")
    if "" in chosen:
        raise UsageError(f"{flag} {text!r} has an empty name between its commas")
    twice = [p for i, p in enumerate(chosen) if p in chosen[:i]]
    if twice:
        raise UsageError(f"{flag} names {twice[0]!r} twice: each would be measured, and listed, twice")
    return chosen


def int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"{flag} takes whole numbers, e.g. {flag} 512,2048; got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} {text!r} names no value; e.g. {flag} 512,2048, or leave it out for the defaults")
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} values must be positive, got {text!r}")
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise UsageError(f"{flag} names {twice[0]} twice: it would be measured, and listed, twice")
    return values


def ready_to_write(directory) -> None:
    """Refuse, before anything is measured, a result table that cannot be read or a directory that cannot
    take a write (read-only, a file, under a file)."""
    try:
        session.ready_to_write(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def load(directory: str | None) -> pd.DataFrame:
    try:
        return results.load(directory)
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def append(rows: list[dict], directory):
    """The rows appended, or rescued to a file of their own named in the error (``session.save``)."""
    return session.save(rows, directory)


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
