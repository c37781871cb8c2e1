"""Versioned, tidy, append-only result tables.

One row per (run, benchmark, parameters, provider, metric). Every row carries the schema version, the run,
its UTC time, the commit (and whether the tree was dirty), the machine, the device and its fingerprint, and
the mfbench version, so a figure can always be traced to where and what measured it.

On disk: ``results.parquet`` (the table of record) and ``results.csv`` (a mirror for diffs) in one
directory. Writers hold an exclusive lock and replace files atomically (temporary file, fsync, rename), so a
reader sees the old table or the new one, and a writer killed mid-write leaves every earlier row intact.
A file that is not an mfbench table, or is corrupt, is reported and never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

import mfbench

SCHEMA_VERSION = 2
TABLE = "results.parquet"
MIRROR = "results.csv"

COLUMNS = [
    "schema_version", "run_id", "time_utc", "commit", "dirty", "machine", "device", "fingerprint",
    "mfbench_version", "benchmark", "params", "provider", "metric", "value", "unit",
    "spread_low", "spread_high", "spread_kind", "samples", "flags",
]
REQUIRED = {"schema_version", "run_id", "commit", "device", "benchmark", "provider", "metric", "value", "unit"}


class ResultsError(Exception):
    """A results file that cannot be read or written safely; the message names the file and the problem."""


def _migrate_1_to_2(frame: pd.DataFrame) -> pd.DataFrame:
    """Schema 1 kept one symmetric ``spread`` and no sanity flags; 2 keeps the interval and its kind."""
    frame = frame.copy()
    spread = pd.to_numeric(frame.pop("spread"), errors="coerce")
    frame["spread_low"] = frame["value"] - spread / 2
    frame["spread_high"] = frame["value"] + spread / 2
    frame["spread_kind"] = spread.notna().map({True: "iqr", False: ""})
    frame["flags"] = ""
    frame["schema_version"] = 2
    return frame


MIGRATIONS = {1: _migrate_1_to_2}


def short_direction(direction: str) -> str:
    """A row's ``direction`` parameter as labels print it: fwd or bwd."""
    return {"forward": "fwd", "backward": "bwd"}.get(direction, direction)


def project_dir() -> Path:
    """The committed tables of the source tree mfbench runs from, else ./results."""
    source = Path(mfbench.__file__).resolve().parent.parent / "results"
    return source if source.is_dir() else Path.cwd() / "results"


@dataclass(frozen=True)
class Run:
    """Who, where and what of one run; ``rows`` stamps it on every measurement."""

    run_id: str
    time_utc: str
    commit: str
    dirty: bool
    machine: str
    device: str
    fingerprint: str

    @classmethod
    def start(cls, device: str = "cpu") -> "Run":
        from mfbench.measure.fingerprint import fingerprint, git_commit

        now = _dt.datetime.now(_dt.timezone.utc)
        info = fingerprint(device)
        commit, dirty = git_commit()
        return cls(f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", now.isoformat(timespec="seconds"), commit, dirty,
                   info["machine"], info["device"], json.dumps(info, sort_keys=True))

    def row(self, benchmark: str, params: dict, provider: str, metric: str, value: float, unit: str,
            spread_low: float | None = None, spread_high: float | None = None, spread_kind: str = "",
            samples: int | None = None, flags: Iterable[str] = ()) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "run_id": self.run_id, "time_utc": self.time_utc,
            "commit": self.commit, "dirty": self.dirty, "machine": self.machine, "device": self.device,
            "fingerprint": self.fingerprint, "mfbench_version": mfbench.__version__, "benchmark": benchmark,
            "params": json.dumps(params, sort_keys=True), "provider": provider, "metric": metric,
            "value": float(value), "unit": unit, "spread_low": spread_low, "spread_high": spread_high,
            "spread_kind": spread_kind, "samples": samples, "flags": ",".join(flags),
        }


def _coerce(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reindex(columns=COLUMNS)
    for col in ("value", "spread_low", "spread_high"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["samples"] = pd.to_numeric(frame["samples"], errors="coerce").astype("Int64")
    frame["schema_version"] = frame["schema_version"].astype("int64")
    # a CSV table reads back as text, and bool("False") is True
    frame["dirty"] = frame["dirty"].map(lambda v: v.strip().lower() == "true" if isinstance(v, str) else bool(v))
    frame["dirty"] = frame["dirty"].astype("bool")
    for col in set(COLUMNS) - {"value", "spread_low", "spread_high", "samples", "schema_version", "dirty"}:
        frame[col] = frame[col].fillna("").astype("string")
    return frame


def _validate(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = REQUIRED - set(frame.columns)
    if missing:
        raise ResultsError(f"{path} is not an mfbench results table (missing columns: {', '.join(sorted(missing))})")
    versions = set(pd.to_numeric(frame["schema_version"], errors="coerce").dropna().astype(int))
    newer = {v for v in versions if v > SCHEMA_VERSION}
    if newer:
        raise ResultsError(f"{path} has schema version {max(newer)}, newer than this mfbench's "
                           f"{SCHEMA_VERSION}: upgrade mfbench to read it")
    parts = []
    for version, part in frame.groupby(pd.to_numeric(frame["schema_version"]).astype(int)):
        while version < SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise ResultsError(f"{path}: no migration from schema version {version}")
            part, version = MIGRATIONS[version](part), version + 1
        parts.append(part)
    return _coerce(pd.concat(parts, ignore_index=True) if parts else frame)


def _read(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:
        raise ResultsError(f"{path} cannot be read as a results table ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); it was left untouched") from None
    return _validate(frame, path)


def load(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """All rows, migrated to the current schema. ``path``: a directory of tables, or one .parquet/.csv
    file; default: the project's committed tables. A directory without a table gives an empty frame."""
    path = Path(path) if path is not None else project_dir()
    if not path.exists() and path.suffix not in (".parquet", ".csv"):
        return _coerce(pd.DataFrame(columns=COLUMNS))  # a results directory not made yet
    if path.is_dir():
        table = path / TABLE
        if not table.exists():
            return _coerce(pd.DataFrame(columns=COLUMNS))
        path = table
    if not path.exists():
        raise ResultsError(f"no results table at {path}")
    return _read(path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append(rows: pd.DataFrame | Iterable[dict], directory: str | os.PathLike | None = None) -> Path:
    """Add rows to the table in ``directory`` (default: the project's); returns the table's path."""
    directory = Path(directory) if directory is not None else project_dir()
    new = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if new.empty:
        return directory / TABLE
    new = _validate(new, Path("<new rows>"))
    with _locked(directory):
        table = directory / TABLE
        old = _read(table) if table.exists() else None
        combined = new if old is None else pd.concat([old, new], ignore_index=True)
        _atomic_write(table, lambda tmp: combined.to_parquet(tmp, index=False))
        _atomic_write(directory / MIRROR, lambda tmp: combined.to_csv(tmp, index=False))
    return table


def runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per run: id, time, device, commit, row count."""
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "time_utc", "device", "commit", "rows"])
    grouped = frame.groupby("run_id", sort=False)
    return pd.DataFrame({
        "run_id": list(grouped.groups), "time_utc": grouped["time_utc"].first().values,
        "device": grouped["device"].first().values,
        "commit": [c[:10] + ("+dirty" if d else "") for c, d in zip(grouped["commit"].first(), grouped["dirty"].first())],
        "rows": grouped.size().values,
    }).sort_values("time_utc")
