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

