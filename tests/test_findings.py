"""The findings tables are rendered from the result rows, and the committed documents hold that rendering."""

import json

import pandas as pd

from mfbench.report.findings import cpu_table, layer_table, model_table
from mfbench.store import results


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:begin -->\n")[1].split(f"<!-- {name}:end -->")[0]


def test_kernels_md_and_the_readme_show_the_layer_rows_of_the_result_tables(committed):
    """As committed: rows a user has added to results/ since are theirs, not the documents'."""
    rows = results.load(committed / "results")
    kernels, readme = (committed / "results" / "kernels.md").read_text(), (committed / "README.md").read_text()
    table = layer_table(rows, "H200")
    assert _block(kernels, "layers") == table
    assert _block(readme, "layers") == table
    assert _block(kernels, "cpu") == cpu_table(rows)
    assert _block(readme, "model") == model_table(rows, "H200")


def _row(provider, metric, value, unit, flags="", t="2026-01-01T00:00:00", target=None, run="r1"):
    params = {"direction": "forward", "tokens": 64, "in_features": 32, "out_features": 32, "tau": 8,
              "weighting": "paper", "dtype": "float16", **({"target_ms": target} if target else {})}
    return dict(benchmark="layer-kernel", device="GPU-X", params=json.dumps(params), provider=provider,
                metric=metric, value=value, unit=unit, flags=flags, time_utc=t, run_id=run, commit="abcdef0123")


def test_floor_against_dense_and_the_newest_row_per_shape():
    frame = pd.DataFrame([
        _row("triton", "time", 9e-3, "s", "floor:hbm", target=1.0),
        _row("triton", "time", 3e-3, "s", "floor:hbm,host-bound", t="2026-02-01T00:00:00", run="r2"),
        _row("triton", "floor_time", 2.0, "ms"),
        _row("dense", "time", 1e-3, "s"),
        _row("dense", "kernel_time", 0.5e-3, "s"),
    ])
    table = layer_table(frame, "GPU-X")
    line = [l for l in table.splitlines() if l.startswith("| fwd")]
    assert len(line) == 1  # a changed target does not make a second line
    cells = [c.strip() for c in line[0].strip("|").split("|")]
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    got = dict(zip(head, cells))
    assert got["triton"] == "3 (host)"  # the newest row, its host-bound flag shown
    assert got["floor"] == "2 (hbm)"
    assert got["floor / dense"] == "2" and got["floor / dense kernel"] == "4"
    assert "`r2` (abcdef0)" in table
    assert layer_table(frame, "other") == "no layer rows for device other\n"


def test_cpu_table_per_model_against_dense():
    def cpu(provider, metric, value, unit, model, run):
        row = _row(provider, metric, value, unit, run=run)
        row.update(device="cpu-2cores", fingerprint=json.dumps({"cpu": model, "cpu_cores": 2}))
        return row
    frame = pd.DataFrame([
        cpu("embedding_bag", "time", 0.03, "s", "CPU A", "a"), cpu("embedding_bag", "floor_time", 3.0, "ms", "CPU A", "a"),
        cpu("reference", "time", 0.2, "s", "CPU A", "a"), cpu("dense", "time", 0.01, "s", "CPU A", "a"),
        cpu("dense", "floor_time", 9.0, "ms", "CPU A", "a"),
        cpu("embedding_bag", "time", 0.012, "s", "CPU B", "b"), cpu("dense", "time", 0.01, "s", "CPU B", "b"),
    ])
    lines = [l for l in cpu_table(frame).splitlines() if l.startswith("| CPU ") and "cores" in l]
    assert len(lines) == 2
    a, b = ([c.strip() for c in l.strip("|").split("|")] for l in lines)
    assert a[:6] == ["CPU A, 2 cores", "fwd s=64 d=32", "embedding_bag 30", "10", "3", "0.3"]  # the lookup's floor
    assert b[2:6] == ["embedding_bag 12", "10", "1.2", "nan"]


def test_model_table_takes_each_length_from_the_newest_run_with_all_four_figures():
    def model(provider, metric, value, run, t, seq=2048):
        params = {"batch": 1, "d": 512, "direction": "forward", "dtype": "float16", "preset": "tiny", "seq": seq,
                  "tau": 8, "weighting": "paper"}
        return dict(benchmark="model", device="GPU-X", params=json.dumps(params), provider=provider, metric=metric,
                    value=value, unit="s", flags="", time_utc=t, run_id=run, commit=run * 5)
    old = [model("triton", "time", 14e-3, "old", "1"), model("triton", "graph_time", 2e-3, "old", "1"),
           model("dense", "time", 8e-3, "old", "1"), model("dense", "graph_time", 1e-3, "old", "1")]
    new = [model("triton", "time", 9e-3, "new", "2"), model("triton", "graph_time", 2e-3, "new", "2"),
           model("dense", "time", 6e-3, "new", "2")]  # dense's graph replay failed in this run
    table = model_table(pd.DataFrame(old + new), "GPU-X")
    assert "| tiny s=2048 | graph replay | 2 ms | 1 ms | 2.00 |" in table
    assert "| 14 ms | 8 ms | 1.75 |" in table and "`old` (oldol" in table  # never the new run's lone figures
    assert model_table(pd.DataFrame(old), "other").startswith("no model rows")


def test_findings_for_a_device_without_rows_is_a_one_line_error(capsys):
    from mfbench.report.findings import main

    assert main(["model", "--device", "h200"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no rows for device 'h200'" in err and "H200" in err


def test_a_time_below_its_floor_is_marked_in_the_findings_tables():
    frame = pd.DataFrame([_row("triton", "time", 1e-3, "s", "floor:hbm,time-below-floor"),
                          _row("triton", "floor_time", 2.0, "ms"), _row("dense", "time", 1e-3, "s")])
    line = next(l for l in layer_table(frame, "GPU-X").splitlines() if l.startswith("| fwd"))
    assert "| 1 IMPOSSIBLE |" in line
    cpu = frame.assign(device="cpu-2cores", fingerprint=json.dumps({"cpu": "CPU A", "cpu_cores": 2}))
    assert "embedding_bag" not in cpu_table(cpu) and "| triton 1 IMPOSSIBLE | 1 |" in cpu_table(cpu)
