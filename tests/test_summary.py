"""The end of `nox -s bench`: MemoryFormer against dense per case of the bench run, and where to look next."""

import dataclasses

import pytest

from mfbench.report import bench_summary as summary
from mfbench.store import results


def _bench_run(run, times, extra=()):
    """A bench run's rows: the runner's time per (benchmark, direction, seq, provider) and an asv value."""
    rows = []
    for (bench, direction, seq, provider), (seconds, flags) in times.items():
        params = {"preset": "micro", "d": 64, "seq": seq, "direction": direction, "dtype": "float32"}
        rows.append(run.row(bench, params, provider, "time", seconds, "s", flags=flags))
        rows.append(run.row(bench, params, provider, "energy_per_token", 1.0, "J/token"))  # not a time: left out
    rows.append(run.row("asv:layer.LayerForward.time_call", {"provider": "dense"}, "dense", "asv_value", 1.0, "s"))
    return rows + list(extra)


@pytest.fixture
def tables(tmp_path):
    older = results.Run.start("cpu")
    newer = dataclasses.replace(older, run_id="20991231T000000Z-new", time_utc="2099-12-31T00:00:00+00:00")
    later_not_bench = dataclasses.replace(older, run_id="20991231T010000Z-run", time_utc="2099-12-31T01:00:00+00:00")
    rows = _bench_run(older, {("layer", "forward", 128, "dense"): (5.0, ())})
    rows += _bench_run(newer, {
        ("layer", "forward", 128, "dense"): (1e-3, ()), ("layer", "forward", 128, "triton"): (4e-3, ("host-bound",)),
        ("layer", "forward", 128, "reference"): (2e-3, ()), ("model", "backward", 1024, "dense"): (2.0, ()),
        ("model", "backward", 1024, "reference"): (1.0, ()), ("block", "forward", 64, "triton"): (3e-6, ("floor:dram", "time-below-floor")),
    })
    # a later `mfbench run`, not a bench: no asv values, so the summary keeps to the bench run
    params = {"preset": "micro", "d": 64, "seq": 128, "direction": "forward", "dtype": "float32"}
    rows.append(later_not_bench.row("layer", params, "dense", "time", 9.0, "s"))
    results.append(rows, tmp_path)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "crossover.png").write_bytes(b"png")
    return tmp_path


def test_the_summary_compares_each_lookup_with_dense_per_case_of_the_bench_run(tables):
    rows = results.load(tables)
    assert summary.bench_run(rows) == "20991231T000000Z-new"
    table = summary.comparison(rows[rows["run_id"] == "20991231T000000Z-new"]).set_index("case")
    assert list(table.columns) == ["device", "dense", "reference", "triton"]  # dense first, then registry order
    assert table.loc["layer fwd s=128 d=64 float32", ["dense", "reference", "triton"]].tolist() == [
        "1 ms", "2 ms (x2.00)", "4 ms* (x4.00)"]
    assert table.loc["model bwd s=1024 d=64 float32", ["dense", "reference", "triton"]].tolist() == [
        "2 s", "1 s (x0.50)", "-"]
    assert table.loc["block fwd s=64 d=64 float32", ["dense", "triton"]].tolist() == ["-", "3 us IMPOSSIBLE"]  # no dense: no ratio


def test_the_summary_names_the_run_and_where_the_dashboard_and_plots_are(tables, capsys, monkeypatch):
    # Paths are shown relative to the working directory when below it (nox's pytest runs with its temporary
    # directory inside the checkout); from a directory beside the tables they are absolute.
    elsewhere = tables.parent / f"{tables.name}-elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert summary.main(["--results-dir", str(tables)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MemoryFormer against dense, run 20991231T000000Z-new")
    assert "4 ms* (x4.00)" in out and "*: host-bound" in out and "5 s" not in out and "9 s" not in out
    assert "the runner's median time per call" in out and "asv's time_call" in out  # which measurement it shows
    assert "3 us IMPOSSIBLE" in out and "IMPOSSIBLE: below its floor (time-below-floor)" in out
    assert f"Dashboard: {tables / 'html'} (not published yet: nox -s publish)" in out
    assert f"Plots: {tables / 'plots'} (crossover.png)" in out
    (tables / "html").mkdir()
    (tables / "html" / "index.html").write_text("<html></html>")
    assert summary.main(["--results-dir", str(tables), "--run", "Z-new"]) == 0
    assert f"Dashboard: {tables / 'html' / 'index.html'};" in capsys.readouterr().out
    assert summary.main(["--results-dir", str(tables), "--run", "2099"]) == 2  # two runs match: say so
    assert "names 2 runs" in capsys.readouterr().out


def test_without_a_bench_run_the_summary_says_so(tmp_path, capsys):
    assert summary.main(["--results-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("No bench run in the result tables yet.")


def test_the_summary_ends_with_what_the_bench_changed_in_the_checkout_and_how_to_keep_or_discard_it(tables, capsys):
    import subprocess

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(tables)]
    subprocess.run([*git, "init", "-q"], check=True)
    assert summary.tree_changes(tables)[0].startswith("Changed in this checkout")  # nothing committed yet
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "results"], check=True)
    assert summary.tree_changes(tables) == []  # a clean tree: nothing to say
    (tables / "plots" / "crossover.png").write_bytes(b"redrawn")
    assert summary.main(["--results-dir", str(tables)]) == 0
    last = capsys.readouterr().out.splitlines()[-2:]
    assert "plots/crossover.png" in last[0] and "git restore" in last[1] and "git commit" in last[1], last
