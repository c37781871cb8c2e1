"""The result tables: schema, append-only atomic writes, locking, migration, refusal of bad files."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from mfbench import results


def _rows(run, n, tag="x"):
    return [run.row("layer", {"seq": i, "tag": tag}, "reference", "time", 0.001 * (i + 1), "s",
                    spread_low=0.0009, spread_high=0.0011, spread_kind="iqr", samples=10) for i in range(n)]


@pytest.fixture
def run():
    return results.Run.start("cpu")


def test_round_trip_and_required_columns(tmp_path, run):
    results.append(_rows(run, 3), tmp_path)
    frame = results.load(tmp_path)
    assert list(frame.columns) == results.COLUMNS
    assert len(frame) == 3 and (frame["schema_version"] == results.SCHEMA_VERSION).all()
    assert {"schema_version", "run_id", "commit", "device", "benchmark", "provider", "metric", "value", "unit"} <= set(frame)
    assert frame["device"].iloc[0] == run.device and frame["run_id"].iloc[0] == run.run_id
    mirror = pd.read_csv(tmp_path / results.MIRROR)
    assert len(mirror) == 3 and list(mirror.columns) == results.COLUMNS
    assert results.load(tmp_path / results.MIRROR)["value"].tolist() == frame["value"].tolist()


@pytest.mark.parametrize("dirty", [False, True])
def test_csv_mirror_reads_back_the_dirty_flag(tmp_path, run, dirty):
    import dataclasses

    results.append(_rows(dataclasses.replace(run, dirty=dirty), 2), tmp_path)
    assert results.load(tmp_path / results.MIRROR)["dirty"].tolist() == [dirty, dirty]
    assert results.load(tmp_path)["dirty"].tolist() == [dirty, dirty]


def test_append_only(tmp_path, run):
    results.append(_rows(run, 2, "a"), tmp_path)
    first = results.load(tmp_path)
    results.append(_rows(results.Run.start("cpu"), 3, "b"), tmp_path)
    both = results.load(tmp_path)
    assert len(both) == 5
    pd.testing.assert_frame_equal(both.iloc[:2].reset_index(drop=True), first)


def test_previous_schema_loads_migrated(tmp_path, run):
    old = pd.DataFrame(_rows(run, 2)).drop(columns=["spread_low", "spread_high", "spread_kind", "flags"])
    old["spread"] = [0.0002, None]
    old["schema_version"] = 1
    old.to_parquet(tmp_path / results.TABLE)
    frame = results.load(tmp_path)
    assert (frame["schema_version"] == 2).all()
    assert frame["spread_low"].iloc[0] == pytest.approx(0.001 - 0.0001)
    assert frame["spread_kind"].tolist() == ["iqr", ""]
    results.append(_rows(run, 1), tmp_path)  # appending to a migrated table keeps every row
    assert len(results.load(tmp_path)) == 3


def test_corrupt_and_foreign_files_are_refused_and_kept(tmp_path, run):
    table = tmp_path / results.TABLE
    table.write_bytes(b"not parquet at all")
    with pytest.raises(results.ResultsError, match="cannot be read"):
        results.load(tmp_path)
    with pytest.raises(results.ResultsError):
        results.append(_rows(run, 1), tmp_path)
    assert table.read_bytes() == b"not parquet at all"

    pd.DataFrame({"a": [1]}).to_parquet(table)
    with pytest.raises(results.ResultsError, match="not an mfbench results table"):
        results.load(tmp_path)
    newer = pd.DataFrame(_rows(run, 1)).assign(schema_version=99)
    newer.to_parquet(table)
    with pytest.raises(results.ResultsError, match="newer"):
        results.load(tmp_path)


_WRITER = textwrap.dedent("""
    import sys
    from mfbench import results
    directory, tag, batches, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    run = results.Run.start("cpu")
    for b in range(batches):
        rows = [run.row("layer", {"tag": tag, "batch": b, "i": i}, "reference", "time", 1.0, "s") for i in range(size)]
        results.append(rows, directory)
        print(b, flush=True)
""")


def _writer(tmp_path, tag, batches, size):
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), tag, str(batches), str(size)],
                            stdout=subprocess.PIPE, text=True)


def test_two_concurrent_writers_lose_no_row(tmp_path):
    procs = [_writer(tmp_path, tag, 8, 50) for tag in ("a", "b")]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    frame = results.load(tmp_path)
    assert len(frame) == 2 * 8 * 50
    assert frame["params"].nunique() == 2 * 8 * 50


def _kill_during_writes(directory, delay):
    proc = _writer(directory, "k", 1000, 4000)
    done = -1
    deadline = time.time() + 120
    while done < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if line.strip():
            done = int(line)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:
        done = max(done, int(line))
    return done


def test_kill_9_mid_write_leaves_every_earlier_row(tmp_path):
    """Kill a writer at several moments; a leftover temporary file proves a kill landed inside a write."""
    caught_mid_write = 0
    for attempt, delay in enumerate((0.05, 0.1, 0.15, 0.2, 0.3, 0.45)):
        directory = tmp_path / str(attempt)
        done = _kill_during_writes(directory, delay)
        frame = results.load(directory)
        # Every completed batch is there; the batch in flight is all there or not at all.
        assert len(frame) in ((done + 1) * 4000, (done + 2) * 4000)
        assert len(frame) >= 3 * 4000
        caught_mid_write += any(p.name.endswith(".tmp") for p in directory.iterdir())
        results.append(_rows(results.Run.start("cpu"), 1), directory)  # and it stays writable
        assert len(results.load(directory)) == len(frame) + 1
    assert caught_mid_write >= 1, "no kill landed inside a write; the test proved nothing"


def test_runs_listing(tmp_path, run):
    results.append(_rows(run, 2), tmp_path)
    listing = results.runs(results.load(tmp_path))
    assert listing["run_id"].tolist() == [run.run_id] and listing["rows"].tolist() == [2]


def test_missing_directory_is_empty_and_missing_file_is_an_error(tmp_path):
    assert results.load(tmp_path / "nothing-yet").empty
    with pytest.raises(results.ResultsError, match="no results table"):
        results.load(tmp_path / "x.parquet")
