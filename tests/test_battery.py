"""Malformed inputs, one after another, across the CLI, the Python API and the result tables. Each must end
in its one-line message and its exit code (README, "Exit codes"), and leave the result table byte for byte as
it was. Everything runs in-process on tiny inputs and measures nothing, except the two subprocesses that
need a real signal or a real pipe."""

import os
import signal
import subprocess
import sys

import pytest

from mfbench.shells.cli import main as cli
from mfbench.report import dashboard
from mfbench.store import results
from mfbench.core.lookup import LookupSpec
from mfbench.core.model import MemoryLayer, ModelConfig


def _rows(run, n, tag="x"):
    return [run.row("layer", {"direction": "forward", "seq": 64 * (i + 1), "tag": tag}, "dense", "time",
                    0.001 * (i + 1), "s", spread_low=0.0009, spread_high=0.0011, spread_kind="iqr", samples=10)
            for i in range(n)]


@pytest.fixture
def table(tmp_path):
    """A results directory holding two small runs; ``table.same()`` says whether both files are untouched."""
    directory = tmp_path / "results"
    for _ in range(2):
        results.append(_rows(results.Run.start("cpu"), 3), directory)

    class Table:
        path = directory
        before = {name: (directory / name).read_bytes() for name in (results.TABLE, results.MIRROR)}

        def same(self) -> bool:
            return all((directory / n).exists() and (directory / n).read_bytes() == b for n, b in self.before.items())

    return Table()


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def corrupt(tmp_path):
    directory = tmp_path / "corrupt"
    directory.mkdir()
    (directory / results.TABLE).write_bytes(b"PAR1 but not really")
    return directory


@pytest.fixture(autouse=True)
def _nothing_measured(monkeypatch):
    """Any case that reached measuring would fail here: the checks must come first."""
    from mfbench.bench import runner
    from mfbench.instruments import ceilings

    def measured(*args, **kwargs):
        raise AssertionError("measured before refusing the input")

    monkeypatch.setattr(ceilings, "ceilings", measured)
    monkeypatch.setattr(runner, "run_matrix", measured)


def _cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# (arguments, where the results go, the message); RESULTS is replaced by the fixture's directory
RESULTS, AFILE, UNDER_A_FILE, CORRUPT = "<results>", "<afile>", "<afile>/sub", "<corrupt>"
CLI_CASES = [
    (["run", "--preset", "nope"], RESULTS, "unknown preset 'nope'"),
    (["run", "--seq", "0"], RESULTS, "--seq values must be positive"),
    (["run", "--seq", "abc"], RESULTS, "--seq takes whole numbers"),
    (["run", "--seq", "-5"], RESULTS, "--seq values must be positive"),
    (["run", "--benchmarks", "layer,nope"], RESULTS, "unknown benchmark 'nope'"),
    (["run", "--dtype", "int8"], RESULTS, "unknown dtype 'int8'"),
    (["run", "--providers", "dense,nope"], RESULTS, "unknown provider 'nope'"),
    (["run", "--device", "tpu"], RESULTS, "unknown device 'tpu'"),
    (["run", "--device", "meta"], RESULTS, "unsupported device 'meta'"),
    (["run", "--device", "cuda:7"], RESULTS, "cuda"),
    (["run", "--device", "not a device"], RESULTS, "unknown device"),
    (["run", "--preset", "smoke"], AFILE, "is a file, not a directory"),
    (["run", "--preset", "smoke"], UNDER_A_FILE, "cannot create the results directory"),
    (["run", "--preset", "smoke"], CORRUPT, "cannot be read as a results table"),
    (["layers", "--cases", "huge"], RESULTS, "unknown case set 'huge'"),
    (["layers", "--cases", "smoke"], CORRUPT, "cannot be read as a results table"),
    (["layers", "--cases", "smoke"], AFILE, "is a file, not a directory"),
    (["layers", "--cases", "smoke"], UNDER_A_FILE, "Not a directory"),
    (["bench", "--dtype", "float8"], RESULTS, "unknown dtype 'float8'"),
    (["show", "no-such-run"], RESULTS, "run 'no-such-run' not found"),
    (["show", "Z-"], RESULTS, "is ambiguous"),
    (["show"], CORRUPT, "cannot be read as a results table"),
    (["compare", "latest", "no-such-run"], RESULTS, "not found"),
    (["train", "--preset", "nope"], RESULTS, "unknown training preset 'nope'"),
    (["train", "--task", "nope"], RESULTS, "unknown task 'nope'"),
    (["train", "--steps", "0"], RESULTS, "--steps must be positive"),
    (["train", "--provider", "dense"], RESULTS, "--provider 'dense'"),
    (["train", "--steps", "1"], CORRUPT, "cannot be read as a results table"),
    (["train", "--steps", "1"], AFILE, "is a file, not a directory"),
]


@pytest.mark.parametrize("args,where,message", CLI_CASES, ids=[" ".join(c[0]) + " @" + c[1] for c in CLI_CASES])
def test_cli_mistakes_end_in_one_line_exit_2_and_leave_the_table(args, where, message, table, afile, corrupt,
                                                                   capsys):
    target = {RESULTS: table.path, AFILE: afile, UNDER_A_FILE: afile / "sub", CORRUPT: corrupt}[where]
    corrupt_before = (corrupt / results.TABLE).read_bytes()
    device = [] if any(a.startswith("--device") for a in args) or args[0] in ("show", "compare") else ["--device", "cpu"]
    code, out, err = _cli(capsys, *args, *device, "--results-dir", target)
    assert code == 2, (out, err)
    assert message in err and err.startswith("mfbench: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out and "measuring" not in out
    assert table.same() and (corrupt / results.TABLE).read_bytes() == corrupt_before
    assert afile.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_results_directory_is_refused_before_measuring(table, capsys):
    table.path.chmod(0o555)
    try:
        code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--results-dir", table.path)
    finally:
        table.path.chmod(0o755)
    assert code == 2 and "cannot write in the results directory" in err and table.same()


@pytest.mark.parametrize("argv", [["run", "--schedule", "sometimes"], ["layers", "--weighting", "heavy"], ["bogus"],
                                  ["snapshot"], ["flops", "--seq", "many"]])
def test_argparse_mistakes_exit_2_with_usage(argv, table, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage: mfbench" in err and "error:" in err and table.same()


def test_flops_with_a_non_positive_length(capsys):
    code, _, err = _cli(capsys, "flops", "--seq", "-1")
    assert code == 2 and err == "mfbench: error: --seq must be a positive integer\n"


def test_snapshot_mistakes_are_one_line_errors(tmp_path, table, capsys):
    snaps = tmp_path / "snaps"
    code, _, err = _cli(capsys, "snapshot", "eval", "nope", "--snapshots-dir", snaps, "--results-dir", table.path)
    assert code == 2 and "snapshot 'nope' not found" in err
    (snaps / "abc123").mkdir(parents=True)
    (snaps / "abc123" / "snapshot.json").write_text('{"id": "abc123"')  # cut short
    code, _, err = _cli(capsys, "snapshot", "list", "--snapshots-dir", snaps)
    assert code == 2 and "unreadable snapshot metadata" in err and "Traceback" not in err
    assert table.same()


def test_distributed_outside_torchrun(table, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = _cli(capsys, "run", "--distributed", "--device", "cpu", "--results-dir", table.path)
    assert code == 2 and "torchrun" in err and table.same()


# --- the Python API ------------------------------------------------------------------------------------

API_CASES = [
    (lambda: MemoryLayer(16, 8, tau=True), "tau must be an integer"),
    (lambda: MemoryLayer(16, 8, tau=8.0), "tau must be an integer"),
    (lambda: MemoryLayer(16, 8, tau=0), "tau must be an integer in [1, 10]"),
    (lambda: MemoryLayer(1024, 8, tau=11), "tau must be an integer in [1, 10]"),
    (lambda: MemoryLayer(True, 8, tau=1), "in_features must be a positive integer"),
    (lambda: MemoryLayer(16, 0), "out_features must be a positive integer"),
    (lambda: MemoryLayer(12, 8, tau=8), "in_features=12 is not divisible by tau=8"),
    (lambda: MemoryLayer(16, 8, temperature=True), "temperature must be positive"),
    (lambda: MemoryLayer(16, 8, temperature=-1.0), "temperature must be positive"),
    (lambda: MemoryLayer(16, 8, weighting="heavy"), "unknown weighting 'heavy'"),
    (lambda: MemoryLayer(16, 8, provider="nope"), "nope"),
    (lambda: LookupSpec(8, "released", 2.0), "released weighting fixes the temperature"),
    (lambda: ModelConfig(d_model=True), "d_model must be a positive integer"),
    (lambda: ModelConfig(n_head=3), "not divisible by n_head=3"),
    (lambda: ModelConfig(rotary_pct=1.5), "rotary_pct must lie in [0, 1]"),
]


@pytest.mark.parametrize("make,message", API_CASES, ids=[c[1][:40] for c in API_CASES])
def test_api_mistakes_raise_value_error_with_the_reason(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


# --- the result tables ---------------------------------------------------------------------------------


def test_rows_without_required_columns_are_refused(table):
    rows = [{k: v for k, v in r.items() if k != "metric"} for r in _rows(results.Run.start("cpu"), 2)]
    with pytest.raises(results.ResultsError, match="missing columns: metric"):
        results.append(rows, table.path)
    assert table.same()


def test_rows_of_a_newer_schema_are_refused(table):
    rows = [dict(r, schema_version=results.SCHEMA_VERSION + 1) for r in _rows(results.Run.start("cpu"), 1)]
    with pytest.raises(results.ResultsError, match="newer than this mfbench"):
        results.append(rows, table.path)
    assert table.same()


def test_appending_to_a_file_is_refused(afile):
    with pytest.raises(results.ResultsError, match="is a file, not a directory"):
        results.append(_rows(results.Run.start("cpu"), 1), afile)
    assert afile.read_text() == "not a directory\n"


def test_a_foreign_parquet_is_refused_and_kept(tmp_path):
    import pandas as pd

    pd.DataFrame({"a": [1, 2]}).to_parquet(tmp_path / results.TABLE)
    before = (tmp_path / results.TABLE).read_bytes()
    with pytest.raises(results.ResultsError, match="not an mfbench results table"):
        results.append(_rows(results.Run.start("cpu"), 1), tmp_path)
    assert (tmp_path / results.TABLE).read_bytes() == before


def test_a_conflicted_mirror_is_refused_by_the_cli_too(table, capsys):
    mirror = table.path / results.MIRROR
    mirror.write_bytes(table.before[results.MIRROR] + b"<<<<<<< HEAD\n=======\n>>>>>>> theirs\n")
    table.before[results.MIRROR] = mirror.read_bytes()
    code, _, err = _cli(capsys, "show", "--results-dir", table.path)
    assert code == 2 and "results.csv cannot be read" in err and table.same()


def test_a_missing_table_file_is_named(tmp_path):
    with pytest.raises(results.ResultsError, match="no results table at"):
        results.load(tmp_path / "nothing.parquet")


# --- the dashboard and the alert -----------------------------------------------------------------------


def test_dashboard_check_without_chromium(tmp_path, monkeypatch, capsys):
    (tmp_path / "index.json").write_text('{"benchmarks": {}}')
    monkeypatch.setattr(dashboard, "chromium", lambda: None)
    assert dashboard.main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Chromium, which is not installed" in err and len(err.strip().splitlines()) == 1


def test_dashboard_without_a_published_site(tmp_path, capsys):
    assert dashboard.main(["check", str(tmp_path)]) == 2
    assert "no index.json" in capsys.readouterr().err


def test_an_alert_base_that_looks_like_an_option_reaches_git_as_a_ref(tmp_path):
    target = tmp_path / "written-by-git"
    out = subprocess.run([sys.executable, "-m", "mfbench.shells.alert", f"--base=--output={target}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--output=" in out.stderr and "Traceback" not in out.stderr
    assert not target.exists()


# --- runs that stop early, runs too long, pipes that close ---------------------------------------------


def _stopping_matrix(signum):
    """run_matrix that yields two measurements (a row each) and is then stopped by a real signal to this
    process."""
    from mfbench.bench.measurement import Measurement

    def run_matrix(items, bench, *args, **kwargs):
        yield from (Measurement(item, skipped="before the signal") for item in items[:2])
        os.kill(os.getpid(), signum)
        yield Measurement(items[2], skipped="never reached")

    return run_matrix


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_keeps_its_rows_marks_them_partial_and_exits_non_zero(signum, table, monkeypatch, capsys):
    from mfbench.bench import measure, runner
    from mfbench.instruments import ceilings

    monkeypatch.setattr(runner, "run_matrix", _stopping_matrix(signum))
    monkeypatch.setattr(ceilings, "ceilings", lambda device, refresh=False: None)
    monkeypatch.setattr(measure.Bench, "machine_rows", lambda self, run: [])  # the two measured rows alone
    previous = signal.getsignal(signal.SIGTERM)
    code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                          "--results-dir", table.path)
    assert code == 128 + signum
    assert f"interrupted by {signal.Signals(signum).name}: keeping the 2 rows" in err
    assert signal.getsignal(signal.SIGTERM) == previous  # main puts the handlers back
    frame = results.load(table.path)
    new = frame[~frame["run_id"].isin(results.load(table.path / results.TABLE).iloc[:6]["run_id"])]
    assert len(frame) == 8 and len(new) == 2 and new["flags"].str.contains(results.PARTIAL).all()
    listing = results.runs(frame)
    assert listing["partial"].tolist() == ["", "", "partial"]
    assert frame.iloc[:6].equals(results.load(table.path).iloc[:6])


def test_a_huge_length_is_warned_about_with_an_estimate(table, monkeypatch, capsys):
    from mfbench.bench import cases, measure, runner
    from mfbench.instruments import ceilings

    def stop(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(runner, "run_matrix", stop)
    monkeypatch.setattr(ceilings, "ceilings", lambda device, refresh=False: None)
    monkeypatch.setattr(measure.Bench, "machine_rows", lambda self, run: [])
    code, _, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                        "--seq", "1000000", "--results-dir", table.path)
    assert code == 130 and table.same()  # nothing measured, nothing written
    longest = max(cases.PRESETS["smoke"].seqs["cpu"])
    assert f"warning: --seq 1000000 is {1000000 / longest:.0f}x the longest length" in err
    assert "estimated at" in err


def test_show_into_a_closed_pipe_is_quiet(table):
    proc = subprocess.Popen([sys.executable, "-m", "mfbench", "show", "latest", "--results-dir", str(table.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head` that has read what it wanted
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err and table.same()


def test_run_ids_match_on_any_unique_part(table, capsys):
    ids = results.runs(results.load(table.path))["run_id"].tolist()
    suffix = ids[0].split("-")[-1]
    code, out, _ = _cli(capsys, "show", suffix, "--results-dir", table.path)
    assert code == 0 and out.startswith(f"run {ids[0]} ")
    code, out, _ = _cli(capsys, "compare", ids[0][4:], ids[1].split("-")[-1], "--results-dir", table.path)
    assert code == 0 and f"A = {ids[0]}" in out and f"B = {ids[1]}" in out


def test_a_write_failing_after_measuring_keeps_the_rows_elsewhere_and_the_table_as_it_was(table, monkeypatch,
                                                                                          capsys):
    import errno

    import pandas as pd

    from mfbench.bench import measure, runner
    from mfbench.bench.measurement import Measurement
    from mfbench.instruments import ceilings

    monkeypatch.setattr(runner, "run_matrix", lambda items, bench, *a, **k: (
        Measurement(item, skipped="measured") for item in items[:4]))
    monkeypatch.setattr(ceilings, "ceilings", lambda device, refresh=False: None)
    monkeypatch.setattr(measure.Bench, "machine_rows", lambda self, run: [])

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    code, _, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                        "--results-dir", table.path)
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert table.same()
    rescue = err.split("rows measured are in ")[1].split(":")[0]
    saved = results.load(rescue)
    assert len(saved) == 4 and set(saved["flags"]) == {"measured"}
    results.append(saved, table.path)  # the command the message gives
    assert len(results.load(table.path)) == 10
    os.unlink(rescue)


def test_damaged_snapshot_weights_are_a_one_line_error_not_an_accuracy_failure(tmp_path, table, capsys, committed):
    import shutil

    from mfbench.store import snapshots

    source = snapshots.find("latest", committed / "results" / "snapshots", architecture="memoryformer")
    snaps = tmp_path / "snaps"
    shutil.copytree(source.path, snaps / source.path.name)
    weights = snaps / source.path.name / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by an interrupted copy
    code, out, err = _cli(capsys, "snapshot", "eval", "latest", "--snapshots-dir", snaps, "--device", "cpu",
                          "--sequences", "4", "--results-dir", table.path)
    assert code == 2, (out, err)  # 2: the input is damaged; 1 would claim an accuracy regression
    assert "cannot be loaded" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert table.same()



# === damaged state and readers during writes (issue 29, sections 3 and 4) =================================
# Each case asserts the exit code, the message, and that the rows already in the tables are intact.

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import textwrap  # noqa: E402

import pandas as pd  # noqa: E402

from mfbench.instruments import ceilings as ceilings_module  # noqa: E402
from mfbench.store import snapshots  # noqa: E402

REAL_CEILINGS = ceilings_module.ceilings  # before the autouse fixture replaces it


def _mixed_rows(run):
    """Rows as a real run makes them: some with NaN values, no spread, no sample count, flags."""
    return [run.row("layer", {"direction": "forward", "seq": 64, "tag": "x"}, "dense", "time", 0.001, "s", 0.0009,
                    0.0011, "iqr", 10),
            run.row("layer", {"direction": "forward", "seq": 64}, "triton", "skipped", float("nan"), "",
                    flags=["no GPU"]),
            run.row("layer", {"direction": "forward", "seq": 64}, "dense", "tokens_per_s", 64000.0, "tokens/s"),
            run.row("ceiling", {}, "-", "onchip_bandwidth", float("nan"), "B/s", flags=["not modelled, on the CPU"])]


@pytest.fixture
def csv_ahead(table):
    """The documented recovery: a merge kept an older parquet, and the CSV holds a run (with NaN cells) the
    parquet lacks. ``csv_ahead.extra`` is that run's id; ``csv_ahead.lines`` the CSV's lines."""
    parquet = (table.path / results.TABLE).read_bytes()
    extra = results.Run.start("cpu")
    results.append(_mixed_rows(extra), table.path)
    (table.path / results.TABLE).write_bytes(parquet)
    table.before = {name: (table.path / name).read_bytes() for name in (results.TABLE, results.MIRROR)}
    table.extra = extra.run_id
    table.old = pd.read_parquet(table.path / results.TABLE)
    return table


def _rows_before_intact(directory, old):
    frame = results.load(directory / results.TABLE)
    pd.testing.assert_frame_equal(frame.iloc[:len(old)].reset_index(drop=True),
                                  results.load(directory).iloc[:len(old)].reset_index(drop=True))
    assert len(frame) >= len(old) and frame["run_id"].iloc[:len(old)].tolist() == old["run_id"].tolist()


@pytest.mark.parametrize("command", [["show"], ["show", "latest"], ["show", "--format", "json"],
                                     ["compare", "<first>", "latest"], ["show", "--repro", "latest"]])
def test_the_csv_recovery_reads_runs_with_nan_cells(command, csv_ahead, capsys):
    first = results.runs(csv_ahead.old)["run_id"].iloc[0]
    code, out, err = _cli(capsys, *[first if a == "<first>" else a for a in command], "--results-dir", csv_ahead.path)
    assert code == 0, err
    assert "Traceback" not in err and "expected str instance" not in err
    assert f"holds 4 rows that results.parquet lacks (runs {csv_ahead.extra}): reading them too" in err
    assert csv_ahead.same()  # a reader writes nothing
    if command == ["show"]:
        assert csv_ahead.extra in out and len(results.runs(results.load(csv_ahead.path))) == 3


def test_the_csv_recovery_keeps_the_run_when_a_run_appends(csv_ahead, monkeypatch, capsys):
    from mfbench.bench import measure, runner
    from mfbench.bench.measurement import Measurement

    monkeypatch.setattr(runner, "run_matrix", lambda items, bench, *a, **k: (
        Measurement(item, skipped="measured") for item in items[:2]))
    monkeypatch.setattr(ceilings_module, "ceilings", lambda device, refresh=False: None)
    monkeypatch.setattr(measure.Bench, "machine_rows", lambda self, run: [])
    code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                          "--results-dir", csv_ahead.path)
    assert code == 0, err
    assert f"(runs {csv_ahead.extra}): kept them" in err and "Traceback" not in err
    frame = results.load(csv_ahead.path / results.TABLE)
    assert len(frame) == 6 + 4 + 2 and (frame["run_id"] == csv_ahead.extra).sum() == 4
    kept = frame[frame["run_id"] == csv_ahead.extra]
    assert kept["value"].isna().sum() == 2 and kept["samples"].isna().sum() == 3  # NaN stays NaN
    _rows_before_intact(csv_ahead.path, csv_ahead.old)


def test_row_keys_are_equal_for_a_row_and_its_csv_round_trip(tmp_path):
    from mfbench.store.tablefiles import row_keys

    results.append(_mixed_rows(results.Run.start("cpu")), tmp_path)
    table, mirror = results.load(tmp_path / results.TABLE), results.load(tmp_path / results.MIRROR)
    assert row_keys(table, results.COLUMNS) == row_keys(mirror, results.COLUMNS)
    assert all(isinstance(k, str) for k in row_keys(table, results.COLUMNS))


def _edit_extra_rows(table, edit):
    """Apply ``edit(row: dict) -> dict`` to the CSV's rows of the run the parquet lacks."""
    mirror = table.path / results.MIRROR
    frame = pd.read_csv(mirror, dtype=str, keep_default_na=False)
    extra = frame["run_id"] == table.extra
    frame = pd.concat([frame[~extra], pd.DataFrame([edit(dict(r)) for _, r in frame[extra].iterrows()])])
    frame.to_csv(mirror, index=False)
    table.before[results.MIRROR] = mirror.read_bytes()
    return int(extra.to_numpy().nonzero()[0][0]) + 2  # the first such line, after the header


@pytest.mark.parametrize("command", [["show"], ["compare", "latest", "latest"], ["run", "--preset", "smoke"]])
@pytest.mark.parametrize("edit,message", [
    (lambda r: dict(r, schema_version="1"), "rows say schema version 1 but lack its column 'spread'"),
    (lambda r: dict(r, schema_version="0"), "no migration from schema version 0"),
    (lambda r: dict(r, schema_version="3"), "has schema version 3, newer than this mfbench's 2"),
], ids=["v1-without-spread", "v0", "v3"])
def test_a_csv_row_of_another_schema_is_refused_in_one_line(command, edit, message, csv_ahead, capsys):
    _edit_extra_rows(csv_ahead, edit)
    device = ["--device", "cpu"] if command[0] == "run" else []
    code, out, err = _cli(capsys, *command, *device, "--results-dir", csv_ahead.path)
    assert code == 2 and message in err and err.startswith("mfbench: error: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out and "KeyError" not in err
    assert csv_ahead.same()


def test_a_whole_csv_of_schema_1_is_upgraded_when_the_parquet_is_rebuilt(table, capsys):
    old = pd.read_csv(table.path / results.MIRROR, dtype=str, keep_default_na=False)
    old = old.drop(columns=["spread_low", "spread_high", "spread_kind", "flags"]).assign(schema_version="1",
                                                                                        spread="0.0002")
    (table.path / results.TABLE).unlink()
    old.to_csv(table.path / results.MIRROR, index=False)
    code, out, err = _cli(capsys, "show", "latest", "--results-dir", table.path)
    assert code == 0 and "results.parquet is missing; reading" in err and "Traceback" not in err
    frame = results.load(table.path)
    assert len(frame) == 6 and (frame["schema_version"] == 2).all()
    assert frame["spread_high"].sub(frame["spread_low"]).round(12).eq(0.0002).all()
    results.append(_rows(results.Run.start("cpu"), 1), table.path)
    assert len(results.load(table.path / results.TABLE)) == 7


CELLS = [("value", "abc", "is not a number"), ("value", "1.2.3", "is not a number"),
         ("spread_low", "0,5", "is not a number"), ("spread_high", "wide", "is not a number"),
         ("samples", "3.5", "is not a whole number"), ("samples", "ten", "is not a whole number"),
         ("samples", "inf", "is not a whole number"), ("dirty", "maybe", "is not True or False"),
         ("dirty", "1", "is not True or False"), ("schema_version", "two", "is not a whole number")]


@pytest.mark.parametrize("command", [["show"], ["run", "--preset", "smoke"]])
@pytest.mark.parametrize("column,cell,what", CELLS, ids=[f"{c}={v}" for c, v, _ in CELLS])
def test_a_cell_that_does_not_parse_is_refused_naming_its_line_and_column(command, column, cell, what, csv_ahead,
                                                                        capsys):
    line = _edit_extra_rows(csv_ahead, lambda r: dict(r, **{column: cell}) if r["metric"] == "time" else r)
    device = ["--device", "cpu"] if command[0] == "run" else []
    code, out, err = _cli(capsys, *command, *device, "--results-dir", csv_ahead.path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, err
    assert f"results.csv cannot be read as a results table: line {line} (run {csv_ahead.extra}), column {column}: " \
           f"{cell!r} {what}" in err
    assert csv_ahead.same()  # never rebuilt with the cell as NaN or False


def test_empty_cells_are_missing_values_not_mistakes(csv_ahead, capsys):
    _edit_extra_rows(csv_ahead, lambda r: dict(r, spread_low="", spread_high="", samples=""))
    code, _, err = _cli(capsys, "show", "latest", "--results-dir", csv_ahead.path)
    assert code == 0 and "reading them too" in err
    assert results.load(csv_ahead.path)["spread_low"].iloc[-4:].isna().all()


# --- the ceilings cache --------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A ceilings cache in ``tmp_path`` and a stand-in for measuring; ``cache.measured`` counts the calls."""
    import datetime as dt

    monkeypatch.setenv("MFBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(ceilings_module, "ceilings", REAL_CEILINGS)

    class Cache:
        path = tmp_path / "ceilings.json"
        measured = 0
        fresh = ceilings_module.Ceilings("cpu", 2e10, 1e11, "float32", None, "-",
                                         dt.datetime.now(dt.timezone.utc).isoformat(), "t",
                                         ceilings_module.socket.gethostname())
        key = None

    def measure(device):
        Cache.measured += 1
        return Cache.fresh

    monkeypatch.setattr(ceilings_module, "measure", measure)
    REAL_CEILINGS("cpu")
    (Cache.key,) = json.loads(Cache.path.read_text())
    Cache.measured = 0
    return Cache


WHOLE_FILES = [("[]", "holds list [], not an object of entries"), ('"x"', 'holds str "x", not an object'),
               ("0", "holds int 0"), ("NaN", "holds float NaN"), ("null", "holds NoneType null"),
               ("[1, 2", "cannot be read (JSONDecodeError)")]


@pytest.mark.parametrize("text,message", WHOLE_FILES, ids=[t for t, _ in WHOLE_FILES])
def test_a_ceilings_cache_that_is_not_an_object_is_measured_again(text, message, cache, capsys):
    cache.path.write_text(text)
    assert ceilings_module.ceilings("cpu") == cache.fresh and cache.measured == 1
    err = capsys.readouterr().err
    assert message in err and "measuring the ceilings again" in err and len(err.strip().splitlines()) == 1
    assert json.loads(cache.path.read_text()) == {cache.key: cache.fresh.as_dict()}  # rewritten, valid


ENTRIES = [("copy_bytes_per_s", "fast", "copy_bytes_per_s is 'fast', not a number"),
           ("copy_bytes_per_s", 0, "copy_bytes_per_s is 0, not a positive finite number"),
           ("matmul_flops_per_s", float("nan"), "matmul_flops_per_s is nan, not a positive finite number"),
           ("copy_bytes_per_s", -5e9, "copy_bytes_per_s is -5000000000.0, not a positive"),
           ("matmul_flops_per_s", float("inf"), "matmul_flops_per_s is inf"),
           ("copy_bytes_per_s", True, "copy_bytes_per_s is True, not a number"),
           ("onchip_bytes_per_s", "x", "onchip_bytes_per_s is 'x', not a number"),
           ("onchip_bytes_per_s", 0, "onchip_bytes_per_s is 0"),
           ("measured_utc", 5, "measured_utc is 5, not text"),
           ("machine", None, "machine is None, not text"),
           ("unknown_field", 1, "of an older layout")]


@pytest.mark.parametrize("field,value,message", ENTRIES, ids=[f"{f}={v}" for f, v, _ in ENTRIES])
def test_a_cached_ceiling_of_the_wrong_shape_is_measured_again(field, value, message, cache, capsys):
    cache.path.write_text(json.dumps({cache.key: dict(cache.fresh.as_dict(), **{field: value})}))
    got = ceilings_module.ceilings("cpu")
    assert got == cache.fresh and cache.measured == 1 and math.isfinite(got.copy_bytes_per_s)
    err = capsys.readouterr().err
    assert message in err and "measuring them again" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("entry", [[], "x", 0, None])
def test_a_cached_entry_that_is_not_an_object_is_measured_again(entry, cache, capsys):
    cache.path.write_text(json.dumps({cache.key: entry, "other|torch": {"kept": True}}))
    assert ceilings_module.ceilings("cpu") == cache.fresh and cache.measured == 1
    assert "were not an entry but" in capsys.readouterr().err
    assert json.loads(cache.path.read_text())["other|torch"] == {"kept": True}  # another device's entry stays


@pytest.mark.parametrize("text", ["NaN", json.dumps({"<key>": {"copy_bytes_per_s": 0}})])
def test_a_run_with_a_damaged_ceilings_cache_measures_them_again_and_records_finite_floors(text, cache, table,
                                                                                         monkeypatch, capsys):
    from mfbench.bench import runner
    from mfbench.bench.measurement import Measurement

    entry = dict(cache.fresh.as_dict(), copy_bytes_per_s=0) if "<key>" in text else None
    cache.path.write_text(json.dumps({cache.key: entry}) if entry else text)
    monkeypatch.setattr(runner, "run_matrix", lambda items, bench, *a, **k: (
        Measurement(item, skipped="measured") for item in items[:2]))
    code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                          "--results-dir", table.path)
    assert code == 0 and "again" in err and "Traceback" not in err, err
    frame = results.load(table.path)
    ceiling = frame[(frame["benchmark"] == "ceiling") & (frame["metric"] == "copy_bandwidth")]
    assert ceiling["value"].tolist() == [2e10] and cache.measured == 1
    assert frame.iloc[:6].equals(results.load(table.path / results.TABLE).iloc[:6])
    assert frame.iloc[:6]["run_id"].tolist() == pd.read_parquet(table.path / results.TABLE)["run_id"][:6].tolist()


# --- snapshots -----------------------------------------------------------------------------------------


@pytest.fixture
def snaps(tmp_path):
    """A copy of the committed MemoryFormer snapshot; ``snaps.meta()`` / ``snaps.write(meta)`` edit its record."""
    source = snapshots.find("latest", architecture="memoryformer")
    root = tmp_path / "snaps"
    shutil.copytree(source.path, root / source.id)

    class Snaps:
        path = root
        dir = root / source.id
        id = source.id

        @staticmethod
        def meta():
            return json.loads((root / source.id / snapshots.META).read_text())

        @staticmethod
        def write(meta):
            (root / source.id / snapshots.META).write_text(json.dumps(meta))

    return Snaps


def _eval(capsys, snaps, table, *extra):
    return _cli(capsys, "snapshot", "eval", snaps.id, "--snapshots-dir", snaps.path, "--device", "cpu",
                "--sequences", "4", "--providers", "reference", "--results-dir", table.path, *extra)


def test_the_committed_snapshots_verify_against_their_ids():
    for snap in snapshots.listing():
        assert snap.load_model() is not None  # hashes the weights and the identity against the id
        assert snap.meta[snapshots.SEAL] == snapshots.seal(snap.meta)


def test_weights_swapped_for_another_training_of_the_same_preset_are_refused(snaps, table, tmp_path, capsys):
    from mfbench.core.model import MemoryFormerLM

    source = snapshots.find(snaps.id, snaps.path)
    other = snapshots.save(MemoryFormerLM(source.config), "memoryformer", source.config, source.task,
                           {"eval": source.meta["eval"]}, tmp_path / "other")
    shutil.copyfile(other.path / snapshots.WEIGHTS, snaps.dir / snapshots.WEIGHTS)
    code, out, err = _eval(capsys, snaps, table)
    assert code == 2, (out, err)  # not 1: nothing regressed, the input is not what it says
    assert f"snapshot {snaps.id}: its weights and identity hash to {other.id}, not to its id" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "agrees" not in out
    assert table.same()


def _no(field):
    def edit(meta):
        meta.pop(field)
        return meta
    return edit


SNAPSHOT_EDITS = [
    ("accuracy edited", lambda m: dict(m, accuracy={"embedding_bag": 0.9}), "meta_sha256 does not match"),
    ("eval edited", lambda m: dict(m, eval=dict(m["eval"], seed=8)), "meta_sha256 does not match"),
    ("commit edited", lambda m: dict(m, commit="0" * 40), "meta_sha256 does not match"),
    ("no id", _no("id"), "(no 'id')"),
    ("no eval", _no("eval"), "(no 'eval')"),
    ("no seal", _no("meta_sha256"), "no 'meta_sha256'; made before records were sealed"),
    ("id of another", lambda m: dict(m, id="0123456789ab"), "its id '0123456789ab' is not its directory's name"),
    ("eval a string", lambda m: dict(m, eval="512"), "'eval' is \"512\", not dict"),
    ("no sequences", lambda m: dict(m, eval={"seed": 7}), "eval sequences None is not a positive whole number"),
    ("zero sequences", lambda m: dict(m, eval={"sequences": 0}), "eval sequences 0"),
    ("accuracy text", lambda m: dict(m, accuracy={"embedding_bag": "high"}), "an accuracy that is not a number"),
    ("a list", lambda m: [m], "list, not an object"),
    ("config text", lambda m: dict(m, config="micro"), "'config' is \"micro\", not dict"),
]


@pytest.mark.parametrize("command", ["eval", "list"])
@pytest.mark.parametrize("edit,message", [e[1:] for e in SNAPSHOT_EDITS], ids=[e[0] for e in SNAPSHOT_EDITS])
def test_a_damaged_or_edited_snapshot_record_is_a_one_line_error_exit_2(command, edit, message, snaps, table,
                                                                       capsys):
    snaps.write(edit(snaps.meta()))
    if command == "eval":
        code, out, err = _eval(capsys, snaps, table)
    else:
        code, out, err = _cli(capsys, "snapshot", "list", "--snapshots-dir", snaps.path)
    assert code == 2, (out, err)
    assert message in err and "damaged snapshot metadata" in err and err.startswith("mfbench: error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "accuracy regression" not in err
    assert table.same()


@pytest.mark.parametrize("tolerance", ["nan", "-1", "inf", "-inf", "-0.001"])
def test_a_tolerance_that_means_nothing_is_a_usage_error(tolerance, snaps, table, capsys):
    code, out, err = _eval(capsys, snaps, table, f"--tolerance={tolerance}")
    assert code == 2 and "--tolerance must be a finite accuracy difference of 0 or more" in err, err
    assert len(err.strip().splitlines()) == 1 and out == "" and table.same()


# --- readers while a writer appends --------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mfbench.store import results
    directory, batches = Path(sys.argv[1]), int(sys.argv[2])
    deadline = time.monotonic() + 60
    while len(list(directory.glob("reader.*.ready"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the readers are reading
    for i in range(batches):  # a Run made here, not started: no torch import to wait for
        run = results.Run(f"20991231T000000Z-w{i:05d}", "2099-12-31T00:00:00+00:00", "c0ffee", False, "m", "cpu", "{}")
        results.append([run.row("layer", {"seq": i}, "dense", m, v, "s", samples=None)
                        for m, v in (("time", 0.001 * (i + 1)), ("failed", float("nan")), ("skipped", float("nan")))],
                       directory)
    (directory / "writer.done").write_text("done")
""")
_READER = textwrap.dedent("""
    import json, sys, traceback
    from pathlib import Path
    from mfbench.store import results
    directory, first, me = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    loads, failures, lengths, last = 0, [], set(), 0
    while True:
        done = (directory / "writer.done").exists()
        try:
            frame = results.load(directory)
            n = len(frame)
            assert n >= last and (n - len(first)) % 3 == 0, f"{n} rows after {last}: not whole batches"
            assert frame["run_id"].iloc[:len(first)].tolist() == first, "earlier rows changed"
            lengths.add(n)
            last = n
        except BaseException as exc:
            failures.append(traceback.format_exception_only(type(exc), exc)[-1].strip())
        loads += 1
        (directory / f"reader.{me}.ready").touch()
        if done:
            break
    print(json.dumps({"loads": loads, "failures": failures[:5], "failed": len(failures), "lengths": len(lengths),
                      "last": last}))
""")


def test_readers_during_appends_always_read_the_last_complete_table(table):
    """Real processes: one writer appends batches (with NaN cells) while two readers load the tables in a
    loop; every load must give whole batches with the earlier rows as they were, and no error."""
    first = results.load(table.path)["run_id"].tolist()
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(results.__file__).parents[2])}  # this checkout's mfbench
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(table.path), ",".join(first), str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    writer = subprocess.run([sys.executable, "-c", _WRITER, str(table.path), "20"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert writer.returncode == 0, writer.stderr
    reports = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0 and "lacks" not in err, err  # never a half-written pair seen as history
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for report in reports:
        assert report["failed"] == 0, report
        assert report["last"] == 6 + 20 * 3 and report["loads"] >= 10, report
    assert max(r["lengths"] for r in reports) > 2, reports  # the reads did overlap the writes
    assert len(results.load(table.path / results.TABLE)) == 6 + 20 * 3


def test_a_pair_replaced_during_the_read_is_read_again(table, monkeypatch):
    """The protocol itself, made deterministic: a writer that replaces the parquet while the reader is
    between the two files makes the reader read the pair again; one that never stops makes it give up
    with a one-line error after its patience, never parse a mixed pair."""
    from pathlib import Path

    from mfbench.store import tablefiles

    replaced, limit = [], [1]

    def open_with_a_writer_between(path, *args, **kwargs):
        handle = open(path, *args, **kwargs)
        if Path(path).name == results.MIRROR and len(replaced) < limit[0]:
            replaced.append(path)
            newer = table.path / f".{results.TABLE}.{len(replaced)}.tmp"
            newer.write_bytes(b"parquet %d" % len(replaced))
            os.replace(newer, table.path / results.TABLE)
        return handle

    monkeypatch.setattr(tablefiles, "open", open_with_a_writer_between, raising=False)
    got = tablefiles.read_consistent([table.path / results.TABLE, table.path / results.MIRROR])
    assert got[table.path / results.TABLE] == b"parquet 1" and len(replaced) == 1  # the second read's
    assert got[table.path / results.MIRROR] == table.before[results.MIRROR]
    limit[0] = 10**9
    with pytest.raises(results.ResultsError, match="kept being replaced for 0.05 s while being read; try again"):
        tablefiles.read_consistent([table.path / results.TABLE, table.path / results.MIRROR], 0.05)
    assert (table.path / results.MIRROR).read_bytes() == table.before[results.MIRROR]


# === issue 29 (run-path): plugins inside the suite's limits, rows never lost, arguments that mean nothing ===
# Each case asserts the exit code, the message, and that the rows measured before it (the `table` fixture's
# two runs) are intact. Signals and pipes are real: sent to this process (in-process cases) or to a child.

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mfbench.core import providers  # noqa: E402
from mfbench.core.lookup import reference_lookup  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _earlier_rows_intact(table) -> bool:
    """The table's first rows are the fixture's two runs, unchanged, whatever was appended after them."""
    from io import BytesIO

    import pandas as pd

    old = pd.read_parquet(BytesIO(table.before[results.TABLE]))
    now = pd.read_parquet(table.path / results.TABLE)
    return len(now) >= len(old) and now.iloc[:len(old)].reset_index(drop=True).equals(old)


def _new_rows(table):
    frame = results.load(table.path)
    return frame.iloc[6:]


def _lookup(layer, x):
    return reference_lookup(x, layer.tables, layer.spec)


def _hangs(layer, x):
    while True:
        time.sleep(0.02)


def _spins(layer, x):
    while True:
        pass


def _exits_0(layer, x):
    sys.exit(0)


def _exits_3(layer, x):
    raise SystemExit(3)


def _interrupts(layer, x):
    raise KeyboardInterrupt


def _writes_tables(layer, x):
    with torch.no_grad():
        layer.tables.add_(1.0)
    return _lookup(layer, x)


def _writes_input(layer, x):
    with torch.no_grad():
        x.mul_(2.0)
    return _lookup(layer, x)


def _nan_from_512(layer, x):
    y = _lookup(layer, x)
    return y * float("nan") if x.shape[0] >= 512 else y


def _inf_from_512(layer, x):
    y = _lookup(layer, x)
    return y + float("inf") if x.shape[0] >= 512 else y


def _off_from_512(layer, x):  # finite but wrong: the float64 check must catch it where it starts
    y = _lookup(layer, x)
    return y * 1.01 if x.shape[0] >= 512 else y


def _nan_inexact_from_512(layer, x):  # an approximation is not float64-checked; its NaN still fails it
    return _nan_from_512(layer, x)


PLUGINS = {
    "rp_hangs": (_hangs, {"budget_s": 0.5}, "OverBudget: one call took longer than its time budget of 0.5 s and was stopped"),
    "rp_spins": (_spins, {"budget_s": 0.5}, "OverBudget: one call took longer than its time budget of 0.5 s and was stopped"),
    "rp_exits_0": (_exits_0, {}, "SystemExit: 0"),
    "rp_exits_3": (_exits_3, {}, "SystemExit: 3"),
    "rp_interrupts": (_interrupts, {}, "KeyboardInterrupt"),
    "rp_writes_tables": (_writes_tables, {}, "wrote into layer.tables"),
    "rp_writes_input": (_writes_input, {}, "wrote into its input x"),
}
LATE = {
    "rp_nan_512": (_nan_from_512, {}, "returned NaN or Inf at 512 tokens"),
    "rp_inf_512": (_inf_from_512, {}, "returned NaN or Inf at 512 tokens"),
    "rp_off_512": (_off_from_512, {}, "float64 check: relative error of"),
    "rp_nan_inexact_512": (_nan_inexact_from_512, {"exact": False}, "returned NaN or Inf at 512 tokens"),
}


@pytest.fixture
def measuring(monkeypatch):
    """The real measuring path (the module's autouse fixture forbids it), with the plugins registered."""
    monkeypatch.undo()
    for name, (fn, options, _) in {**PLUGINS, **LATE}.items():
        providers.register_provider(name, fn, **options)
    yield
    for name in {**PLUGINS, **LATE}:
        providers.unregister(name)


@pytest.mark.parametrize("name", PLUGINS)
def test_a_misbehaving_plugin_is_a_failed_provider_and_the_run_keeps_the_others(name, measuring, table, capsys):
    code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--benchmarks", "layer",
                          "--providers", f"dense,{name}", "--results-dir", table.path)
    assert code == 1, (out, err)
    assert f"mfbench: failed: {name} (the reasons are in their rows)" in err and "Traceback" not in err
    new = _new_rows(table)
    failed = new[new["provider"] == name]
    assert len(failed) == 2 and (failed["metric"] == "failed").all()  # forward and backward
    assert failed["flags"].str.contains(PLUGINS[name][2], regex=False).all(), failed["flags"].tolist()
    dense = new[(new["provider"] == "dense") & (new["metric"] == "time")]
    assert len(dense) == 2 and (dense["value"] > 0).all()
    assert _earlier_rows_intact(table)


@pytest.mark.parametrize("name", LATE)
def test_every_measured_shape_is_checked_in_run_not_only_the_trial(name, measuring, table, capsys):
    code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--benchmarks", "layer",
                          "--seq", "64,512", "--providers", f"dense,{name}", "--results-dir", table.path)
    assert code == 1 and f"mfbench: failed: {name}" in err, (out, err)
    new = _new_rows(table)
    mine = new[new["provider"] == name]
    seq = mine["params"].map(lambda p: json.loads(p)["seq"])
    assert (mine[seq == 64]["metric"] != "failed").all() and (mine[seq == 64]["metric"] == "time").sum() == 2
    late = mine[(seq == 512) & (mine["metric"] == "failed")]
    assert len(late) == 2 and late["flags"].str.contains(LATE[name][2], regex=False).all(), mine["flags"].tolist()
    timed_late = ((seq == 512) & (mine["metric"] == "time")).sum()
    assert timed_late == (2 if name == "rp_off_512" else 0)  # a wrong answer is timed and failed; a NaN never timed
    assert (new[(new["provider"] == "dense") & (new["metric"] == "time")]["value"] > 0).sum() == 4
    assert _earlier_rows_intact(table)


def test_layers_fails_the_same_plugins_as_run(measuring, table, capsys):
    code, out, err = _cli(capsys, "layers", "--cases", "smoke", "--device", "cpu", "--format", "json",
                          "--providers", "dense,rp_writes_tables,rp_exits_0", "--results-dir", table.path)
    assert code == 1 and "mfbench: failed: rp_writes_tables, rp_exits_0" in err, err
    new = _new_rows(table)
    for name in ("rp_writes_tables", "rp_exits_0"):
        assert (new[new["provider"] == name]["metric"] == "failed").all()
    assert _earlier_rows_intact(table)


def test_the_budget_does_not_touch_the_timed_calls(measuring):
    """The deadline is armed around the first call only: no timer is left running into the timing."""
    import signal as signals_

    with providers.deadline(5.0):
        pass
    assert signals_.getitimer(signals_.ITIMER_REAL) == (0.0, 0.0)
    before = signals_.getsignal(signals_.SIGALRM)
    with pytest.raises(providers.OverBudget, match="took longer than its time budget of 0.2 s"):
        with providers.deadline(0.2):
            time.sleep(5)
    assert signals_.getitimer(signals_.ITIMER_REAL) == (0.0, 0.0) and signals_.getsignal(signals_.SIGALRM) == before


# --- arguments that mean nothing: refused before measuring -----------------------------------------------

MEANINGLESS = [
    (["run", "--providers", ","], "--providers ',' names no provider"),
    (["run", "--providers", ""], "--providers '' names no provider"),
    (["run", "--providers", " , "], "names no provider"),
    (["run", "--providers", "dense,dense"], "--providers names 'dense' twice"),
    (["run", "--providers", "dense, dense"], "--providers names 'dense' twice"),
    (["run", "--providers", "dense,,reference"], "has an empty name between its commas"),
    (["run", "--seq", "64,64"], "--seq names 64 twice"),
    (["run", "--seq", ""], "--seq '' names no value"),
    (["run", "--seq", ","], "--seq ',' names no value"),
    (["run", "--benchmarks", ""], "--benchmarks '' names no benchmark"),
    (["run", "--benchmarks", "layer,layer"], "--benchmarks names 'layer' twice"),
    (["layers", "--cases", "smoke", "--providers", ","], "names no provider"),
    (["layers", "--cases", "smoke", "--providers", "dense,dense"], "--providers names 'dense' twice"),
]


@pytest.mark.parametrize("args,message", MEANINGLESS, ids=[" ".join(repr(a) for a in c[0]) for c in MEANINGLESS])
def test_arguments_that_mean_nothing_are_one_line_errors(args, message, table, capsys):
    code, out, err = _cli(capsys, *args, "--device", "cpu", "--results-dir", table.path)
    assert code == 2, (out, err)
    assert message in err and err.startswith("mfbench: error: ") and len(err.strip().splitlines()) == 1, err
    assert table.same()


# --- an output path checked before measuring -------------------------------------------------------------

@pytest.mark.parametrize("where,message", [
    ("NODIR/x.csv", "NODIR does not exist"),
    ("<afile>/x.csv", "is not a directory"),
    ("<dir>", "is a directory"),
    ("<dir>/deep/er/x.csv", "does not exist"),
])
def test_a_csv_that_cannot_be_written_is_refused_before_measuring(where, message, table, afile, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = where.replace("<afile>", str(afile)).replace("<dir>", str(tmp_path))
    code, out, err = _cli(capsys, "layers", "--cases", "smoke", "--device", "cpu", "--providers", "dense",
                          "--csv", target, "--results-dir", table.path)
    assert code == 2, (out, err)
    assert message in err and err.startswith("mfbench: error: ") and "the CSV file" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and table.same()
    assert afile.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_csv_in_a_read_only_directory_is_refused_before_measuring(table, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = _cli(capsys, "layers", "--cases", "smoke", "--device", "cpu", "--providers", "dense",
                            "--csv", locked / "x.csv", "--results-dir", table.path)
    finally:
        locked.chmod(0o755)
    assert code == 2 and "permission denied" in err and table.same()


# --- the results lock held by another process ------------------------------------------------------------

def _measured(monkeypatch, n=4):
    """run_matrix yielding ``n`` skipped measurements at once (a row each): rows to store, nothing timed."""
    from mfbench.bench import measure, runner
    from mfbench.bench.measurement import Measurement
    from mfbench.instruments import ceilings

    monkeypatch.setattr(runner, "run_matrix", lambda items, bench, *a, **k: (
        Measurement(item, skipped="measured") for item in items[:n]))
    monkeypatch.setattr(ceilings, "ceilings", lambda device, refresh=False: None)
    monkeypatch.setattr(measure.Bench, "machine_rows", lambda self, run: [])


class _Holder:
    """The results directory's lock, held by another process (flock locks of two opens conflict too)."""

    def __init__(self, directory):
        self.proc = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, sys, time; h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(float(sys.argv[2]))"), str(directory / ".lock"), "60"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self):
        self.proc.kill()
        self.proc.wait()


def _when_waiting(monkeypatch, action):
    """Run ``action`` in a thread once the command has found the lock held and started waiting."""
    from mfbench.bench import session

    real, started = session._lock_free, []

    def watched(handle):
        free = real(handle)
        if not free and not started:
            started.append(threading.Timer(0.3, action))
            started[0].start()
        return free

    monkeypatch.setattr(session, "_lock_free", watched)
    return started


def _rescued(err):
    path = err.split("rows measured are in ")[1].split(":")[0]
    saved = results.load(path)
    os.unlink(path)
    return saved


def test_a_lock_held_elsewhere_is_waited_for_said_and_on_timeout_the_rows_are_rescued(table, monkeypatch, capsys):
    _measured(monkeypatch)
    monkeypatch.setenv("MFBENCH_LOCK_WAIT_S", "1")
    holder = _Holder(table.path)
    try:
        start = time.monotonic()
        code, _, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                            "--results-dir", table.path)
    finally:
        holder.release()
    assert code == 2 and time.monotonic() - start < 30
    assert "are locked by another process; waiting up to 1 s for it (MFBENCH_LOCK_WAIT_S)" in err
    assert "mfbench: error: the result tables in" in err and "stayed locked by another process for 1 s" in err
    assert len(_rescued(err)) == 4 and table.same()


def _run_while_locked(table, monkeypatch, capsys, action):
    """``mfbench run`` (four rows, nothing timed) with the lock held elsewhere; ``action(holder)`` runs once
    it waits."""
    _measured(monkeypatch)
    monkeypatch.setenv("MFBENCH_LOCK_WAIT_S", "60")
    holder = _Holder(table.path)
    done = _when_waiting(monkeypatch, lambda: action(holder))
    try:
        code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                              "--results-dir", table.path)
    finally:
        holder.release()
    assert done and "waiting up to 60 s" in err
    return code, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_waiting_for_the_lock_rescues_the_rows(signum, table, monkeypatch, capsys):
    code, _, err = _run_while_locked(table, monkeypatch, capsys, lambda holder: os.kill(os.getpid(), signum))
    assert code == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name} while waiting for the lock" in err
    assert len(_rescued(err)) == 4 and table.same()


def test_a_lock_released_while_waiting_lets_the_rows_in(table, monkeypatch, capsys):
    code, out, err = _run_while_locked(table, monkeypatch, capsys, lambda holder: holder.release())
    assert code == 0 and "wrote 4 rows" in out, err
    assert len(_new_rows(table)) == 4 and _earlier_rows_intact(table)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_the_write_waits_for_it_then_stops(signum, table, monkeypatch, capsys):
    _measured(monkeypatch)
    real = results.append

    def slow_append(rows, directory=None):
        os.kill(os.getpid(), signum)  # arrives mid-write
        return real(rows, directory)

    monkeypatch.setattr(results, "append", slow_append)
    code, _, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                        "--results-dir", table.path)
    assert code == 128 + signum
    assert f"{signal.Signals(signum).name} arrived while the 4 rows were written" in err
    assert len(_new_rows(table)) == 4 and _earlier_rows_intact(table)


def test_a_hangup_ignored_on_the_way_in_stays_ignored(table, monkeypatch, capsys):
    """`nohup mfbench run`: the terminal closing must not stop it."""
    from mfbench.bench import runner
    from mfbench.bench.measurement import Measurement

    _measured(monkeypatch)

    def hung_up(items, bench, *args, **kwargs):
        yield Measurement(items[0], skipped="before the hangup")
        os.kill(os.getpid(), signal.SIGHUP)
        yield from (Measurement(item, skipped="after the hangup") for item in items[1:4])

    monkeypatch.setattr(runner, "run_matrix", hung_up)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code, out, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--providers", "dense",
                              "--results-dir", table.path)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert code == 0 and "wrote 4 rows" in out and "interrupted" not in err, err
    new = _new_rows(table)
    assert len(new) == 4 and not new["flags"].str.contains(results.PARTIAL).any() and _earlier_rows_intact(table)


# --- real processes: signals during a plugin's call, a reader that goes away -----------------------------

SLOW_PLUGIN = '''
import os, time
from mfbench import register_provider
from mfbench.core.lookup import reference_lookup

def slow(layer, x):
    mark = os.environ.get("RP_MARK")
    if x.shape[0] >= 64 and mark and not os.path.exists(mark):  # the first call at 64 tokens, once
        open(mark, "w").close()  # the test sends its signal now
        time.sleep(120)
    return reference_lookup(x, layer.tables, layer.spec)

def swallows(layer, x):
    try:
        return slow(layer, x)
    except BaseException:  # a plugin that eats everything, the user's Ctrl-C too
        return reference_lookup(x, layer.tables, layer.spec)

register_provider("rp_slow", slow)
register_provider("rp_swallows", swallows)
'''


def _child(table, tmp_path, providers_, *extra, **popen):
    plugin = tmp_path / "rp_slow_plugin.py"
    plugin.write_text(SLOW_PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "RP_MARK": str(tmp_path / "mark")}
    return subprocess.Popen([sys.executable, "-m", "mfbench", "run", "--preset", "smoke", "--device", "cpu",
                             "--benchmarks", "layer", "--providers", providers_, "--provider-module", str(plugin),
                             "--results-dir", str(table.path), *extra], env=env, cwd=ROOT, text=True,
                            stdout=popen.get("stdout", subprocess.DEVNULL), stderr=subprocess.PIPE)


def _wait_for(path, proc, seconds=240):
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, "the child never reached the slow call"
        time.sleep(0.1)


SLOW = pytest.mark.skipif(os.environ.get("MFBENCH_SLOW_TESTS") != "1",
                          reason="SIGINT and SIGTERM while measuring are also tested in-process: set MFBENCH_SLOW_TESTS=1")


@pytest.mark.parametrize("signum,provider", [pytest.param(signal.SIGINT, "rp_slow", marks=SLOW),
                                             pytest.param(signal.SIGTERM, "rp_slow", marks=SLOW),
                                             (signal.SIGHUP, "rp_slow"), (signal.SIGINT, "rp_swallows")])
def test_a_real_signal_during_a_plugin_call_stops_the_run_and_keeps_its_rows(signum, provider, table, tmp_path):
    proc = _child(table, tmp_path, f"dense,{provider}", "--seq", "32,64")  # the trial (5 tokens) is not slow
    _wait_for(tmp_path / "mark", proc)
    proc.send_signal(signum)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: keeping the " in err and "Traceback" not in err
    new = _new_rows(table)
    assert len(new) and new["flags"].str.contains(f"{results.PARTIAL},interrupted:{name}", regex=False).all()
    dense = new[(new["provider"] == "dense") & (new["metric"] == "time")]
    assert len(dense) >= 2 and not (new["metric"] == "failed").any()  # the signal is no provider's failure
    assert _earlier_rows_intact(table)


def test_a_reader_that_goes_away_keeps_the_rows_and_says_where(table, tmp_path):
    proc = _child(table, tmp_path, "dense,reference", "--seq", "32,64", stdout=subprocess.PIPE)
    head = [proc.stdout.readline() for _ in range(3)]  # `| head -3`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=240) == 128 + signal.SIGPIPE, err
    assert head[0].startswith("run ") and "Traceback" not in err and "BrokenPipeError" not in err
    assert "the reader of the output went away: keeping the " in err
    new = _new_rows(table)
    assert f"mfbench: wrote {len(new)} rows to {table.path / results.TABLE}" in err
    assert len(new) and new["flags"].str.contains(f"{results.PARTIAL},interrupted:SIGPIPE", regex=False).all()
    assert _earlier_rows_intact(table)


def test_sigusr1_prints_where_a_measuring_command_is_and_it_goes_on(capfd):
    """`kill -USR1` on a long run: every thread's stack on stderr, the run untouched (the GPU batch scripts
    send it before SIGTERM at a limit, so a stall says where it was)."""
    from mfbench.core import signals

    previous = signals.catch()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signals.restore(previous)
    assert "test_sigusr1_prints_where" in capfd.readouterr().err
    import faulthandler

    assert not faulthandler.unregister(signal.SIGUSR1)  # restore() took it away again


def test_a_command_under_capsys_runs_without_a_stack_dump_on_sigusr1(capsys):
    """stderr without a file descriptor (captured, a notebook): no stack dump, and no failure either."""
    from mfbench.core import signals

    signals.restore(signals.catch())
    assert cli.main(["flops", "--seq", "128"]) == 0
