"""Machine-readable output (issue 22): --format json validates against mfbench/store/results.schema.json, csv
holds the same records, and the schema is where the result tables' columns are documented."""

import io
import json

import pandas as pd
import pytest

from mfbench.store import documents, results
from mfbench.shells.cli.main import main


@pytest.fixture
def two_runs(tmp_path):
    params = {"direction": "forward", "seq": 64, "preset": "micro", "dtype": "float32", "weighting": "paper"}
    rows = []
    for run_id, t in (("20260101T000000Z-aaaaaa", 1.0e-3), ("20260102T000000Z-bbbbbb", 1.3e-3)):
        run = results.Run(run_id, run_id[:8], "c0ffee", False, "m", "cpu-2cores", "{}")
        rows += [run.row("layer", params, "reference", "time", t, "s", spread_low=t * 0.99, spread_high=t * 1.01,
                         spread_kind="iqr", samples=10),
                 run.row("layer", params, "reference", "energy_per_token", float("nan"), "J/token",
                         flags=["unavailable: no counter"]),
                 run.row("layer", params, "broken", "failed", float("nan"), "", flags=["RuntimeError: broken"])]
    results.append(rows, tmp_path)
    return tmp_path


def _json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_every_json_output_validates_against_the_documented_schema(two_runs, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    schema = documents.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    where = ("--results-dir", str(two_runs), "--format", "json")
    docs = {"runs": _json(capsys, "show", *where), "rows": _json(capsys, "show", "latest", *where),
                 "comparison": _json(capsys, "compare", "aaaaaa", "bbbbbb", *where),
                 "repro": _json(capsys, "show", "--repro", "aaaaaa", *where)}
    for kind, doc in docs.items():
        jsonschema.validate(doc, schema)
        assert doc["kind"] == kind and doc["rows"], kind
    assert [r["run_id"] for r in docs["runs"]["rows"]] == ["20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"]
    rows = docs["rows"]["rows"]
    assert {r["metric"] for r in rows} == {"time", "energy_per_token", "failed"}
    assert next(r for r in rows if r["metric"] == "energy_per_token")["value"] is None  # NaN is null, not 0
    assert next(r for r in rows if r["metric"] == "time")["params"]["seq"] == 64
    (compared,) = docs["comparison"]["rows"]
    assert compared["ratio"] == pytest.approx(1.3) and compared["verdict"] == "slower"
    commands = {r["provider"]: r["command"] for r in docs["repro"]["rows"]}
    assert commands["reference"] == ("mfbench run --preset smoke --device cpu --providers reference --seq 64 "
                                     "--benchmarks layer --dtype float32 --weighting paper")
    # a document that breaks the schema is caught: a row without its value
    broken = json.loads(json.dumps(docs["rows"]))
    del broken["rows"][0]["value"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_csv_holds_the_same_records_as_json(two_runs, capsys):
    where = ("--results-dir", str(two_runs))
    for argv in (("show", "latest"), ("compare", "aaaaaa", "bbbbbb"), ("show",)):
        doc = _json(capsys, *argv, *where, "--format", "json")
        assert main([*argv, *where, "--format", "csv"]) == 0
        frame = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
        assert list(frame.columns) == list(doc["rows"][0]) and len(frame) == len(doc["rows"]), argv


def test_the_schema_documents_every_column_of_load(committed):
    docs = documents.column_docs()
    assert list(docs) == results.COLUMNS and all(len(text) > 10 for text in docs.values())
    row = documents.schema()["$defs"]["row"]
    assert row["required"] == results.COLUMNS and set(row["properties"]) == set(results.COLUMNS)
    assert list(results.load(committed / "results").columns) == results.COLUMNS


def test_layers_prints_its_rows_as_json_with_progress_on_stderr(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    code = main(["layers", "--cases", "smoke", "--providers", "reference,dense", "--device", "cpu", "--no-save",
                 "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)  # nothing but the document on stdout
    jsonschema.validate(doc, documents.schema())
    times = [r for r in doc["rows"] if r["metric"] == "time"]
    assert {(r["provider"], r["params"]["direction"]) for r in times} == {
        (p, d) for p in ("reference", "dense") for d in ("forward", "backward")}
    assert all(r["benchmark"] == "layer-kernel" and r["value"] > 0 for r in times)
    assert "measuring the ceilings" in out.err


def test_a_format_that_does_not_exist_is_a_usage_error(two_runs, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["show", "--results-dir", str(two_runs), "--format", "yaml"])
    assert stop.value.code == 2 and "invalid choice: 'yaml'" in capsys.readouterr().err
