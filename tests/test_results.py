"""The result tables: schema, append-only atomic writes, locking, migration, refusal of bad files."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from mfbench.store import results


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
    from mfbench.store import results
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


def _pair_bytes(directory):
    return {name: (directory / name).read_bytes() for name in (results.TABLE, results.MIRROR)}


def test_missing_parquet_is_rebuilt_from_the_csv_and_says_so(tmp_path, run, capsys):
    results.append(_rows(run, 5), tmp_path)
    (tmp_path / results.TABLE).unlink()  # a merge conflict on the binary file, resolved by deleting it
    assert len(results.load(tmp_path)) == 5
    assert "missing; reading" in capsys.readouterr().err
    results.append(_rows(results.Run.start("cpu"), 2), tmp_path)
    assert "rebuilding it from" in capsys.readouterr().err
    assert len(results.load(tmp_path)) == 7 and len(results.load(tmp_path / results.TABLE)) == 7


def test_csv_rows_the_parquet_lacks_are_kept(tmp_path, run, capsys):
    results.append(_rows(run, 3), tmp_path)
    kept = (tmp_path / results.TABLE).read_bytes()
    other = results.Run.start("cpu")
    results.append(_rows(other, 4, "theirs"), tmp_path)
    (tmp_path / results.TABLE).write_bytes(kept)  # the merge took our parquet and both sides' CSV lines
    assert len(results.load(tmp_path)) == 7
    assert other.run_id in capsys.readouterr().err
    results.append(_rows(results.Run.start("cpu"), 1), tmp_path)
    frame = results.load(tmp_path / results.TABLE)
    assert len(frame) == 8 and (frame["run_id"] == other.run_id).sum() == 4
    assert "lacks" in capsys.readouterr().err


def test_a_mirror_behind_the_parquet_is_not_history(tmp_path, run, capsys):
    """A writer killed between replacing the parquet and the CSV leaves the CSV a batch behind."""
    results.append(_rows(run, 2), tmp_path)
    behind = (tmp_path / results.MIRROR).read_bytes()
    results.append(_rows(run, 3, "more"), tmp_path)
    (tmp_path / results.MIRROR).write_bytes(behind)
    assert len(results.load(tmp_path)) == 5 and capsys.readouterr().err == ""


def test_a_csv_with_conflict_markers_is_refused_and_nothing_is_written(tmp_path, run):
    results.append(_rows(run, 2), tmp_path)
    mirror = tmp_path / results.MIRROR
    lines = mirror.read_text().splitlines(keepends=True)
    mirror.write_text("".join([lines[0], "<<<<<<< HEAD\n", *lines[1:], "=======\n", ">>>>>>> theirs\n"]))
    before = _pair_bytes(tmp_path)
    with pytest.raises(results.ResultsError, match="cannot be read"):
        results.append(_rows(results.Run.start("cpu"), 1), tmp_path)
    assert _pair_bytes(tmp_path) == before


@pytest.mark.parametrize("fail_at", ["csv", "second-replace"])
def test_a_write_failing_halfway_leaves_the_pair_as_it_was(tmp_path, run, monkeypatch, fail_at):
    import errno

    results.append(_rows(run, 3), tmp_path)
    before = _pair_bytes(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_at == "csv":
        monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    else:
        real, calls = os.replace, []

        def replace(src, dst):
            calls.append(dst)
            if str(dst).endswith(results.MIRROR):
                no_space()
            return real(src, dst)

        monkeypatch.setattr(results.os, "replace", replace)
    with pytest.raises(results.ResultsError, match="No space left on device.*left as they were"):
        results.append(_rows(results.Run.start("cpu"), 2), tmp_path)
    monkeypatch.undo()
    assert _pair_bytes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", results.MIRROR, results.TABLE]


def test_stale_temporary_files_are_removed_under_the_lock_and_ignored_by_git(tmp_path, run):
    results.append(_rows(run, 1), tmp_path)
    stale = [tmp_path / f".{results.TABLE}.4242.abcdef.tmp", tmp_path / f".{results.MIRROR}.4242.abcdef.tmp"]
    for path in stale:
        path.write_bytes(b"half a table")
    results.append(_rows(run, 1), tmp_path)
    assert not any(path.exists() for path in stale) and len(results.load(tmp_path)) == 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ignored = subprocess.run(["git", "-C", root, "check-ignore", "-q", f"results/{stale[0].name}"])
    assert ignored.returncode == 0


def test_check_writable_names_what_is_wrong_before_anything_is_measured(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(results.ResultsError, match="is a file, not a directory"):
        results.check_writable(afile)
    with pytest.raises(results.ResultsError, match="cannot create the results directory.*Not a directory"):
        results.check_writable(afile / "sub")
    assert results.check_writable(tmp_path / "new" / "dir").is_dir()
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [".lock"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_check_writable_refuses_a_read_only_directory(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(results.ResultsError, match="cannot write in the results directory"):
            results.check_writable(tmp_path)
    finally:
        tmp_path.chmod(0o755)


def test_partial_runs_are_listed_as_partial(tmp_path, run):
    results.append(results.mark_partial(_rows(run, 2), "interrupted:SIGTERM"), tmp_path)
    results.append(_rows(results.Run.start("cpu"), 1), tmp_path)
    listing = results.runs(results.load(tmp_path)).set_index("run_id")
    assert listing.loc[run.run_id, "partial"] == "partial" and (listing["partial"] == "").sum() == 1
    assert results.load(tmp_path).query("run_id == @run.run_id")["flags"].str.contains(results.PARTIAL).all()
