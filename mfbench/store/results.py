"""Versioned, tidy, append-only result tables.

One row per (run, benchmark, parameters, provider, metric). Every row carries the schema version, the run,
its UTC time, the commit (and whether the tree was dirty), the machine, the device and its fingerprint, and
the mfbench version, so a figure can always be traced to where and what measured it.

On disk: ``results.parquet`` (the table of record) and ``results.csv`` (a mirror for diffs) in one
directory. Writers hold an exclusive lock and write both files to temporary files before replacing either,
so a write that fails (a full disk) leaves the pair as it was, and a writer killed mid-write leaves every
earlier row intact; temporary files a killed writer left are removed by the next writer, under the lock.
Readers take no lock: they read both files through and check that neither was replaced meanwhile
(``tablefiles.read_consistent``), so a reader beside a writer gets the last complete pair. A file that is
not an mfbench table, is corrupt, or holds a cell that does not parse is reported (naming its line and
column) and never overwritten. The CSV is history
too: a parquet lost in a merge is rebuilt from it, and rows only the CSV holds are kept, saying so on stderr.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

import mfbench
from mfbench.store.tablefiles import ResultsError, read_files, row_keys, unparsed_cell

SCHEMA_VERSION = 2
TABLE = "results.parquet"
MIRROR = "results.csv"
# The JSON schema of --format json output; its "row" definition documents every column below.
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")

COLUMNS = [
    "schema_version", "run_id", "time_utc", "commit", "dirty", "machine", "device", "fingerprint",
    "mfbench_version", "benchmark", "params", "provider", "metric", "value", "unit",
    "spread_low", "spread_high", "spread_kind", "samples", "flags",
]
REQUIRED = {"schema_version", "run_id", "commit", "device", "benchmark", "provider", "metric", "value", "unit"}
# Every row of a run that was interrupted (Ctrl-C, SIGTERM) carries this flag: its matrix is incomplete.
PARTIAL = "partial-run"


def _migrate_1_to_2(frame: pd.DataFrame) -> pd.DataFrame:
    """Schema 1 kept one symmetric ``spread`` and no sanity flags; 2 keeps the interval and its kind."""
    frame = frame.copy()
    spread = pd.to_numeric(frame.pop("spread"), errors="coerce")
    value = pd.to_numeric(frame["value"], errors="coerce")  # a CSV's cells are text (checked to parse)
    frame["spread_low"] = value - spread / 2
    frame["spread_high"] = value + spread / 2
    frame["spread_kind"] = spread.notna().map({True: "iqr", False: ""})
    frame["flags"] = ""
    frame["schema_version"] = 2
    return frame


MIGRATIONS = {1: _migrate_1_to_2}


# Metrics where more is better; every other measured metric (times, energy, memory) is better lower.
# Regressions are judged by this wherever they are reported (mfbench compare; the asv suites track the
# lower-is-better complement of each, since asv's regression feed only looks for increases).
HIGHER_IS_BETTER = frozenset({"tokens_per_s", "flops_per_s", "achieved_bandwidth", "pct_of_copy_ceiling",
                              "pct_of_roofline", "accuracy", "bucket_agreement", "steps"})
# Properties of the work or the machine, not scores of the code.
NEUTRAL = frozenset({"flops_analytic", "flops_counted", "hbm_bytes_min", "arithmetic_intensity", "copy_bandwidth",
                     "matmul_rate", "onchip_bandwidth", "seconds_spent", "joules_spent", "cpu_seconds_spent"})


def worse(metric: str, before: float, after: float) -> bool:
    """Whether ``after`` is worse than ``before`` for ``metric`` (False for a neutral metric)."""
    if metric in NEUTRAL:
        return False
    return after < before if metric in HIGHER_IS_BETTER else after > before


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
    def start(cls, device: str = "cpu", source: tuple[str, bool] | None = None) -> "Run":
        """A new run on ``device``; ``source``: its (commit, dirty) where the caller knows them better than
        the tree does now (asv rewrites tracked files while it runs), else read from the tree."""
        from mfbench.instruments.fingerprint import fingerprint, git_commit

        now = _dt.datetime.now(_dt.timezone.utc)
        info = fingerprint(device)
        commit, dirty = source or git_commit()
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
            "spread_kind": spread_kind, "samples": samples, "flags": join_flags(flags),
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


def _where(frame: pd.DataFrame, position: int, path: Path) -> str:
    """Where a row is, as a user finds it: a CSV's line (after the header), else its row number."""
    run = frame["run_id"].iloc[position]
    place = f"line {position + 2}" if path.suffix == ".csv" else f"row {position + 1}"
    return place + (f" (run {run})" if isinstance(run, str) and run else "")


def _validate(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = REQUIRED - set(frame.columns)
    if missing:
        raise ResultsError(f"{path} is not an mfbench results table (missing columns: {', '.join(sorted(missing))})")
    bad = unparsed_cell(frame)
    if bad:
        position, column, cell, what = bad
        raise ResultsError(f"{path} cannot be read as a results table: {_where(frame, position, path)}, column "
                           f"{column}: {cell!r} is not {what}; it was left untouched (fix or remove that row)")
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
            try:
                part, version = MIGRATIONS[version](part), version + 1
            except KeyError as exc:  # a row that says it is older than the columns it came with
                raise ResultsError(f"{path}: {len(part)} rows say schema version {version} but lack its column "
                                   f"{exc}, first {_where(frame, frame.index.get_loc(part.index[0]), path)}; they "
                                   "cannot be upgraded, and the file was left untouched") from None
        parts.append(part)
    return _coerce(pd.concat(parts, ignore_index=True) if parts else frame)


def _unreadable(path: Path, exc: Exception) -> ResultsError:
    return ResultsError(f"{path} cannot be read as a results table ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); it was left untouched")


def _read(path: Path, data: bytes) -> pd.DataFrame:
    try:
        frame = (pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False) if path.suffix == ".csv"
                 else pd.read_parquet(io.BytesIO(data)))
    except Exception as exc:
        raise _unreadable(path, exc) from None
    try:
        return _validate(frame, path)
    except (ValueError, TypeError) as exc:  # e.g. a CSV with merge-conflict markers: rows without a schema version
        raise _unreadable(path, exc) from None


def _only_in_mirror(table: pd.DataFrame, path: Path, data: bytes) -> pd.DataFrame:
    """Rows of the CSV mirror at ``path`` (its bytes: ``data``) that the parquet lacks. A mirror with fewer
    rows of a run is only behind (a writer killed between the two replaces); one with more, or a run of its
    own, holds history. Only the run ids are read unless some run has more rows in the mirror."""
    try:
        more = pd.read_csv(io.BytesIO(data), usecols=["run_id"], dtype=str, keep_default_na=False)["run_id"]
    except Exception as exc:
        raise _unreadable(path, exc) from None
    more = more.value_counts()
    held = table["run_id"].value_counts()
    suspects = [r for r, n in more.items() if n > held.get(r, 0)]
    if not suspects:
        return table.iloc[0:0]
    mirror = _read(path, data)
    mirror = mirror[mirror["run_id"].isin(suspects)]
    have: dict[str, int] = {}
    for key in row_keys(table[table["run_id"].isin(suspects)], COLUMNS):
        have[key] = have.get(key, 0) + 1
    keep = []
    for key in row_keys(mirror, COLUMNS):
        keep.append(have.get(key, 0) == 0)
        have[key] = have.get(key, 0) - 1
    return mirror[keep]


def _say(message: str) -> None:
    print(f"mfbench: {message}", file=sys.stderr, flush=True)


def _history(directory: Path, writing: bool) -> pd.DataFrame | None:
    """Every row the directory's pair of files holds; None where neither exists. A missing parquet is
    read from the CSV, and CSV rows the parquet lacks are added; both are said on stderr."""
    table, mirror = directory / TABLE, directory / MIRROR
    data = read_files([table, mirror])
    if data[table] is None:
        if data[mirror] is None:
            return None
        frame = _read(mirror, data[mirror])
        _say(f"{table} is missing; {'rebuilding it from' if writing else 'reading'} {mirror} ({len(frame)} rows)")
        return frame
    frame = _read(table, data[table])
    if data[mirror] is None:
        return frame
    extra = _only_in_mirror(frame, mirror, data[mirror])
    if len(extra):
        _say(f"{mirror} holds {len(extra)} rows that {table.name} lacks (runs "
             f"{', '.join(extra['run_id'].unique())}): {'kept them' if writing else 'reading them too'}")
        frame = pd.concat([frame, extra], ignore_index=True)
    return frame


def load(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """All rows, migrated to the current schema, one column per ``COLUMNS`` (what each holds:
    ``documents.column_docs()``, from ``results.schema.json``). ``path``: a directory of tables, or one .parquet/.csv
    file; default: the project's committed tables. A directory without a table gives an empty frame."""
    path = Path(path) if path is not None else project_dir()
    if not path.exists() and path.suffix not in (".parquet", ".csv"):
        return _coerce(pd.DataFrame(columns=COLUMNS))  # a results directory not made yet
    if path.is_dir():
        frame = _history(path, writing=False)
        return _coerce(pd.DataFrame(columns=COLUMNS)) if frame is None else frame
    data = read_files([path])[path]
    if data is None:
        raise ResultsError(f"no results table at {path}")
    return _read(path, data)


def _not_writable(directory: Path, exc: OSError, what: str) -> ResultsError:
    return ResultsError(f"{what} {directory} ({exc.strerror or type(exc).__name__}); "
                        "the result tables were left as they were")


def check_writable(directory: str | os.PathLike | None = None) -> Path:
    """Make sure rows can be appended in ``directory`` (creating it), before anything is measured: a
    ResultsError names a path that is a file, a directory that cannot be made, or one that cannot be written."""
    directory = Path(directory) if directory is not None else project_dir()
    if directory.exists() and not directory.is_dir():
        raise ResultsError(f"the results directory {directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_writable(directory, exc, "cannot create the results directory") from None
    try:  # named like a writer's temporary file, so one a kill leaves behind is cleaned like theirs
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{TABLE}.", suffix=".tmp"):
            pass
        with open(directory / ".lock", "a+"):
            pass
    except OSError as exc:
        raise _not_writable(directory, exc, "cannot write in the results directory") from None
    return directory


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / ".lock", "a+")
    except OSError as exc:
        raise _not_writable(directory, exc, "cannot lock the results directory") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            for name in (TABLE, MIRROR):  # left by writers killed mid-write; a live writer would hold the lock
                for stale in directory.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")


def _write_pair(directory: Path, frame: pd.DataFrame) -> None:
    """Replace both files with ``frame``, or neither: both are written and synced first, and the parquet is
    put back if the CSV cannot replace its file."""
    table, mirror = directory / TABLE, directory / MIRROR
    written = {table: _temporary(table), mirror: _temporary(mirror)}
    backup = _temporary(table)
    try:
        frame.to_parquet(written[table], index=False)
        frame.to_csv(written[mirror], index=False)
        for tmp in written.values():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        if table.exists():
            try:
                os.link(table, backup)
            except OSError:  # a file system without hard links
                shutil.copyfile(table, backup)
        os.replace(written[table], table)
        try:
            os.replace(written[mirror], mirror)
        except OSError:
            if backup.exists():
                os.replace(backup, table)
            else:
                table.unlink()
            raise
    except OSError as exc:
        raise _not_writable(directory, exc, "could not write the result tables in") from None
    finally:
        for tmp in (*written.values(), backup):
            tmp.unlink(missing_ok=True)


def append(rows: pd.DataFrame | Iterable[dict], directory: str | os.PathLike | None = None) -> Path:
    """Add rows to the table in ``directory`` (default: the project's); returns the table's path."""
    directory = Path(directory) if directory is not None else project_dir()
    new = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if new.empty:
        return directory / TABLE
    new = _validate(new, Path("<new rows>"))
    if directory.exists() and not directory.is_dir():
        raise ResultsError(f"the results directory {directory} is a file, not a directory")
    with _locked(directory):
        old = _history(directory, writing=True)
        _write_pair(directory, new if old is None else pd.concat([old, new], ignore_index=True))
    return directory / TABLE


def join_flags(flags: Iterable[str], existing: str = "") -> str:
    """Flags as the one comma-separated text a row keeps (the only place they are joined): a comma inside
    a flag (a reason quoting a message) becomes a semicolon, so the text splits back into the same flags."""
    return ",".join(filter(None, [existing, *(f.replace(",", ";") for f in flags)]))


def add_flags(rows: list[dict], *flags: str) -> list[dict]:
    """Append ``flags`` to each of ``rows`` (a run-wide condition, such as a locked clock)."""
    for row in rows:
        row["flags"] = join_flags(flags, row.get("flags") or "")
    return rows


def mark_partial(rows: list[dict], why: str) -> list[dict]:
    """``rows`` of a run that stopped early, each flagged ``partial-run`` and with the reason."""
    return add_flags(rows, PARTIAL, why)


def runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per run: id, time, device, commit, row count, and "partial" for an interrupted run."""
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "time_utc", "device", "commit", "rows", "partial"])
    partial = frame["flags"].fillna("").str.split(",").map(lambda flags: PARTIAL in flags)
    grouped = frame.assign(partial=partial).groupby("run_id", sort=False)
    return pd.DataFrame({
        "run_id": list(grouped.groups), "time_utc": grouped["time_utc"].first().values,
        "device": grouped["device"].first().values,
        "commit": [c[:10] + ("+dirty" if d else "") for c, d in zip(grouped["commit"].first(), grouped["dirty"].first())],
        "rows": grouped.size().values,
        "partial": grouped["partial"].any().map({True: "partial", False: ""}).values,
    }).sort_values("time_utc")
