"""How the result tables are read from disk: a consistent pair of files while writers replace them, and
cells checked before they become numbers.

Writers (``results.append``) write each file to a temporary file, sync it and rename it over the old one,
the parquet first and then the CSV, under an exclusive lock. Readers take no lock (a read-only checkout
has none to take, and a stuck writer must not stop ``show``): they read the bytes of every file of the
pair and then check that each name still holds the file they read. A name replaced meanwhile means a
writer finished in between, and the pair is read again; so a reader only ever parses files that were,
at one instant, the complete files on disk.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pandas as pd

# How long a reader keeps trying for a pair no writer replaced during the read before giving up.
READ_PATIENCE_S = 30.0


class ResultsError(Exception):
    """A results file that cannot be read or written safely; the message names the file and the problem."""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def read_consistent(paths: list[Path], patience_s: float = READ_PATIENCE_S) -> dict[Path, bytes | None]:
    """The bytes of each of ``paths`` (None where absent), all as they were at one instant: every file is
    read through, then each name is checked to still hold the file that was read. OSError other than a
    missing file propagates."""
    deadline = time.monotonic() + patience_s
    while True:
        got: dict[Path, bytes | None] = {}
        opened: dict[Path, tuple[int, int] | None] = {}
        with contextlib.ExitStack() as stack:
            for path in paths:
                try:
                    handle = stack.enter_context(open(path, "rb"))
                except FileNotFoundError:
                    got[path], opened[path] = None, None
                    continue
                st = os.fstat(handle.fileno())
                got[path], opened[path] = handle.read(), (st.st_dev, st.st_ino)
            # checked while every file is still open, so no inode read can have been reused
            if all(_identity(path) == opened[path] for path in paths):
                return got
        if time.monotonic() > deadline:
            raise ResultsError(f"{', '.join(map(str, paths))} kept being replaced for {patience_s:g} s while "
                               "being read; try again")
        time.sleep(0.005)


def read_files(paths: list[Path]) -> dict[Path, bytes | None]:
    """``read_consistent``, with a file that cannot be read a ResultsError naming it."""
    try:
        return read_consistent(paths)
    except OSError as exc:
        raise ResultsError(f"{exc.filename} cannot be read ({exc.strerror or type(exc).__name__})") from None


def _cell_text(value) -> str:
    """One cell as text, the same for a value and its CSV round trip: floats print exactly, and every
    missing value (NaN, None, pandas' NA; pandas 3 keeps NaN as a float in text columns) is empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def row_keys(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Each row of ``frame`` as one string of its ``columns``, equal for a row of a coerced table and the
    same row read back from its CSV and coerced."""
    cells = [frame[col].astype(object).map(_cell_text).tolist() for col in columns]
    return ["\x1f".join(row) for row in zip(*cells)]


NUMBERS = ("value", "spread_low", "spread_high", "spread")  # spread: schema 1
INTEGERS = ("samples", "schema_version")
BOOLEANS = ("dirty",)
_TRUTH = {"true", "false"}


def _text(cells: pd.Series) -> pd.Series | None:
    """The cells as stripped text where the column holds text (a CSV's), else None: a typed parquet
    column has nothing to parse."""
    if pd.api.types.is_numeric_dtype(cells) or pd.api.types.is_bool_dtype(cells):
        return None
    return cells.map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v).strip())


def unparsed_cell(frame: pd.DataFrame) -> tuple[int, str, str, str] | None:
    """The first cell of ``frame`` that would not become what its column holds, as (row position,
    column, cell, what it should be), or None. Empty cells are missing values, not mistakes (the CSV
    writes NaN as empty); only text that names no number, no whole number, no truth value is refused,
    so a damaged cell never becomes NaN or False unseen."""
    found = []
    for columns, what in ((NUMBERS, "a number"), (INTEGERS, "a whole number"), (BOOLEANS, "True or False")):
        for col in (c for c in columns if c in frame.columns):
            text = _text(frame[col])
            if text is None:
                continue
            given = text != ""
            if what == "True or False":
                bad = given & ~text.str.lower().isin(_TRUTH)
            else:
                number = pd.to_numeric(text.where(given, "0"), errors="coerce")
                bad = given & number.isna() & ~text.str.lower().isin({"nan", "-nan"})
                if what == "a whole number":
                    bad |= given & number.notna() & ((number % 1 != 0) | ~number.abs().lt(2**63))
            if bad.any():
                position = int(bad.to_numpy().nonzero()[0][0])
                found.append((position, col, str(text.iloc[position]), what))
    return min(found) if found else None
