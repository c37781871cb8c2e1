"""Result rows for programs: ``--format json`` documents (validated by ``results.schema.json``, which is
also where every column of ``results.load()`` is documented) and ``--format csv``."""

from __future__ import annotations

import json
import sys

import pandas as pd

import mfbench
from mfbench.store.results import COLUMNS, SCHEMA_FILE, SCHEMA_VERSION


def schema() -> dict:
    """The JSON schema that --format json output validates against (``results.schema.json``)."""
    return json.loads(SCHEMA_FILE.read_text())


def column_docs() -> dict[str, str]:
    """What each column of ``load()`` holds, in ``COLUMNS`` order: the one place it is written is the
    schema's ``row`` definition."""
    documented = schema()["$defs"]["row"]["properties"]
    return {column: documented[column]["description"] for column in COLUMNS}


def _plain(value: object) -> object:
    """A cell as JSON has it: NaN and NA as null, numpy scalars as Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def records(frame: pd.DataFrame) -> list[dict]:
    """``frame``'s rows as JSON-ready dicts; ``params`` as an object."""
    out = []
    for row in frame.to_dict("records"):
        row = {k: _plain(v) for k, v in row.items()}
        if isinstance(row.get("params"), str) and row["params"].startswith("{"):
            row["params"] = json.loads(row["params"])
        out.append(row)
    return out


def document(kind: str, rows: list[dict]) -> dict:
    """A --format json document (``results.schema.json``): ``kind`` is rows, runs, comparison or repro."""
    return {"format": "mfbench", "schema_version": SCHEMA_VERSION, "mfbench_version": mfbench.__version__,
            "kind": kind, "rows": rows}


def write(kind: str, frame: pd.DataFrame, fmt: str, stream=None) -> None:
    """``frame`` as --format json (a document of ``kind``) or csv (params as JSON text) on ``stream``."""
    stream = stream or sys.stdout
    if fmt == "json":
        json.dump(document(kind, records(frame)), stream, indent=1, allow_nan=False)
        stream.write("\n")
    else:
        frame.to_csv(stream, index=False)
