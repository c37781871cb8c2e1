"""`nox -s bench` on a new machine adds that machine's rows and files and leaves every other machine's
committed results as they were: the bench's writing steps run here against a copy of the committed
results/ (the H100's asv results, the shared benchmark list, the tables) to which another machine has
added a run of its own at this commit."""

import json
import shutil
import subprocess
import sys

import pandas as pd

from mfbench.shells import asvrun
from mfbench.store import results

OTHER = "other-machine-test"


def _files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _published(results_dir, html_dir):
    """`asv publish` as the bench session runs it: {machine folder/graph: {revision: the values it draws}}.
    Values, not bytes: a benchmark list that grew adds empty series for the new parameters."""
    conf = asvrun._conf_for(asvrun.ROOT, results_dir, html_dir)
    subprocess.run([sys.executable, "-m", "asv", "publish", "--config", str(conf)], cwd=asvrun.ROOT, check=True,
                   capture_output=True)
    graphs = {}
    for path in (html_dir / "graphs").rglob("*.json"):
        machine = next((part for part in path.parts if part.startswith("machine-")), None)
        if machine and path.name != "summary.json":  # summary.json: the machine's index, not a graph
            points = json.loads(path.read_text())
            values = {p[0]: sorted(v for v in (p[1] if isinstance(p[1], list) else [p[1]]) if v is not None) for p in points}
            graphs[f"{machine}/{path.stem}"] = values
    return graphs


def _quick_run(monkeypatch, tmp_path, store, providers, seq, commit):
    """One quick asv run of a suite class on this CPU into ``store`` for ``commit``, its rows cached for the
    tables."""
    for name, value in (("PROVIDERS", providers), ("DEVICES", "cpu"), ("SEQS", seq), ("PRESET", "micro")):
        monkeypatch.setenv(f"MFBENCH_ASV_{name}", value)
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path / f"cache-{seq}"))
    asvrun.run_commit(asvrun.ROOT, commit, store / "asv", r"^layer\.LayerForwardMetrics\.track_median", quick=True)


def test_a_bench_on_a_new_machine_adds_its_files_and_rewrites_no_other_machines(tmp_path, monkeypatch, capfd, committed):
    COMMITTED = committed / "results"  # as committed: a bench the user ran here since is theirs
    store = tmp_path / "results"
    shutil.copytree(COMMITTED / "asv", store / "asv")
    for name in (results.TABLE, results.MIRROR):
        shutil.copy(COMMITTED / name, store / name)
    this_machine = asvrun.machine_name()
    shutil.rmtree(store / "asv" / this_machine, ignore_errors=True)  # new here, even where results/ has its bench
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # asv's machine file: the test's machines stay in the test
    # another machine's run with this code, other lengths and providers, filed under a commit of the
    # committed results (asv publish draws commits of the main branch only, and this one may not be there yet)
    committed = json.loads(next((store / "asv").glob("*/*-existing-*.json")).read_text())["commit_hash"]
    with monkeypatch.context() as other:
        other.setattr(asvrun, "machine_name", lambda: OTHER)
        _quick_run(other, tmp_path, store, "reference,dense", "32", committed)
    before = _files(store)
    drawn = _published(store / "asv", tmp_path / "html-before")
    assert any(OTHER in g and any(drawn[g].values()) for g in drawn)  # the other machine's values are drawn

    # the bench's writing steps on this machine: asv, then asv's values and the rows behind them into the tables
    head = asvrun._git("rev-parse", "HEAD")
    _quick_run(monkeypatch, tmp_path, store, "embedding_bag,dense", "64", head)
    added = asvrun.import_to_tables(store / "asv", head, store, tmp_path / "cache-64")
    capfd.readouterr()

    after = _files(store)
    shared = {"asv/benchmarks.json", results.TABLE, results.MIRROR}  # every machine's: grown, not rewritten
    assert [p for p in before if p not in shared and after.get(p) != before[p]] == []  # none changed or went away
    # what it added: this machine's folder of asv results (and the writers' lock, which git ignores)
    new = {p.split("/")[1] if p.startswith("asv/") else p for p in after.keys() - before.keys()}
    assert new == {this_machine, ".lock"}, new
    # the tables: every earlier row as it was (the CSV's bytes, the parquet's values), this run's after them
    assert after[results.MIRROR].startswith(before[results.MIRROR])
    old, now = results.load(COMMITTED / results.TABLE), results.load(store / results.TABLE)
    assert len(now) == len(old) + added
    pd.testing.assert_frame_equal(now.iloc[:len(old)], old)
    # the shared benchmark list still names every parameter the earlier runs were measured at, so the
    # dashboard draws every value of the other machines as before: the other CPU's, and the H100's wherever
    # the benchmark's code is unchanged (asv hides results of a benchmark whose code changed since: a
    # changed benchmark starts a new series, on every machine alike)
    was, listed = json.loads(before["asv/benchmarks.json"]), json.loads(after["asv/benchmarks.json"])
    for name, bench in was.items():
        if isinstance(bench, dict):
            assert all(set(a) <= set(b) for a, b in zip(bench["params"], listed[name]["params"])), name
    redrawn = _published(store / "asv", tmp_path / "html-after")
    kept = {g: v for g, v in drawn.items() if listed[g.split("/")[1]].get("version") == was[g.split("/")[1]].get("version")}
    assert any(OTHER in g for g in kept) and {g: redrawn.get(g) for g in kept} == kept


def test_the_merged_benchmark_list_keeps_both_machines_parameters():
    h100 = {"layer.T.time": {"param_names": ["device", "seq"], "params": [["'cuda'"], ["2048", "8192"]], "version": "a"},
            "gone.T.time": {"param_names": [], "params": [], "version": "b"}}
    cpu = {"layer.T.time": {"param_names": ["device", "seq"], "params": [["'cpu'"], ["64", "2048"]], "version": "c"},
           "new.T.time": {"param_names": [], "params": [], "version": "d"}}
    merged = asvrun.merged_benchmark_list(h100, cpu)
    assert merged["layer.T.time"] == {"param_names": ["device", "seq"], "params": [["'cuda'", "'cpu'"], ["2048", "8192", "64"]],
                                      "version": "c"}
    assert merged["gone.T.time"] == h100["gone.T.time"] and merged["new.T.time"] == cpu["new.T.time"]
    assert asvrun.merged_benchmark_list(h100, h100) == h100
