"""The asv driver without a benchmark run: the rows name the tree as it was; the dashboard's network log."""

import os
import subprocess
import sys

import pytest

from mfbench.shells import asvrun
from mfbench.report import browser, dashboard


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "mfbench" / "kernels").mkdir(parents=True)
    (tmp_path / "mfbench" / "kernels" / "lookup.py").write_text("A = 1\n")
    (tmp_path / "README.md").write_text("hello\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "base")
    return tmp_path


def test_bench_rows_name_the_tree_as_it_was_before_asv_wrote_its_files(repo, monkeypatch):
    """asv rewrites results/asv/benchmarks.json, a tracked file; the rows must still call a clean tree clean.
    The commit and its state are handed to the import, never through this process's environment."""
    monkeypatch.setattr(asvrun, "ROOT", repo)
    for name in ("MFBENCH_COMMIT", "MFBENCH_DIRTY", "MFBENCH_ASV_CACHE"):
        monkeypatch.delenv(name, raising=False)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    def asv_writes_its_files(tree, commit, results_dir, bench, quick, cache=None):
        (repo / "README.md").write_text("asv's output\n")
        return results_dir

    named = {}

    def import_rows(results_dir, commit, directory, cache, dirty):
        named["tree"] = (commit, dirty)
        return 0

    monkeypatch.setattr(asvrun, "run_commit", asv_writes_its_files)
    monkeypatch.setattr(asvrun, "import_to_tables", import_rows)
    before = dict(os.environ)
    assert asvrun.main(["bench"]) == 0
    assert named["tree"] == (head, False)
    assert {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"} == \
        {k: v for k, v in before.items() if k != "TRITON_CACHE_DIR"}  # the entry point sets the cache alone


def test_netlog_reader_tolerates_a_truncated_log(tmp_path):
    log = tmp_path / "netlog.json"
    log.write_text('{"constants": {}, "events": ['
                   '{"source": {"id": 1}, "params": {"url": "http://127.0.0.1:8000/index.json"}},'
                   '{"source": {"id": 1}, "params": {"initiator": "http://127.0.0.1:8000"}},'
                   '{"source": {"id": 2}, "params": {"url": "https://update.example.org/x"}},'
                   '{"source": {"id": 2}, "params": {"initiator": "not an origin"}},'
                   '{"source": {"id": 3}, "params": {"url": "https://cdn.example.org/x.js"}},'
                   '{"source": {"id": 3}, "params": {"initiator": "http://127.0.0.1:8000"}},')
    requests = browser._netlog_requests(log)
    assert [(r.url, r.by_page, r.off_machine) for r in requests] == [
        ("http://127.0.0.1:8000/index.json", True, False), ("https://update.example.org/x", False, True),
        ("https://cdn.example.org/x.js", True, True)]
    page = dashboard.PageCheck("", requests, None)
    assert page.off_machine == ["https://cdn.example.org/x.js"]
    assert page.browser_background == ["https://update.example.org/x"]


def test_accuracy_suite_values_equal_the_rows_behind_them(tmp_path, monkeypatch, capfd):
    """suites/accuracy.py on the committed micro snapshot: asv's tracked accuracy per provider is the
    row the snapshot evaluation wrote (and the dense baseline's own snapshot shows as provider dense),
    every provider evaluated in one setup_cache process."""
    import json

    monkeypatch.setenv("MFBENCH_ASV_PROVIDERS", "reference,embedding_bag,dense")
    monkeypatch.setenv("MFBENCH_ASV_DEVICES", "cpu")
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path / "cache"))
    head = asvrun._git("rev-parse", "HEAD")
    asvrun.run_commit(asvrun.ROOT, head, tmp_path / "asv", "^accuracy", quick=True)
    assert capfd.readouterr().out.count("Setting up accuracy:") == 1
    tracked = {v.params["provider"]: v.value for v in asvrun.asv_values(tmp_path / "asv", asvrun.machine_name(), head)
               if v.benchmark == "accuracy.SnapshotAccuracy.track_error_rate"}
    rows = {r["provider"]: r["value"] for p in (tmp_path / "cache").glob("*.json") if not p.name.startswith("probe")
            for r in json.loads(p.read_text()) if r["metric"] == "accuracy"}
    assert set(tracked) == {"reference", "embedding_bag", "dense"}
    assert tracked == pytest.approx({k: 1 - v for k, v in rows.items()})
    assert tracked["embedding_bag"] == tracked["reference"] < tracked["dense"]


def _layer_forward_metrics(tmp_path, monkeypatch, capfd, providers: str) -> tuple[str, dict, list[dict]]:
    """A quick asv run of suites/layer.py's LayerForwardMetrics on the CPU (micro preset, 64 tokens): asv's
    output, the tracked medians by provider, and the runner's rows behind them (the suites' cache)."""
    import json

    monkeypatch.setenv("MFBENCH_ASV_PROVIDERS", providers)
    monkeypatch.setenv("MFBENCH_ASV_DEVICES", "cpu")
    monkeypatch.setenv("MFBENCH_ASV_SEQS", "64")
    monkeypatch.setenv("MFBENCH_ASV_PRESET", "micro")
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path / "cache"))
    head = asvrun._git("rev-parse", "HEAD")
    asvrun.run_commit(asvrun.ROOT, head, tmp_path / "asv", r"^layer\.LayerForwardMetrics", quick=True)
    out = capfd.readouterr().out
    tracked = {v.params["provider"]: v.value for v in asvrun.asv_values(tmp_path / "asv", asvrun.machine_name(), head)
               if v.benchmark == "layer.LayerForwardMetrics.track_median_time"}
    cached = [r for p in (tmp_path / "cache").glob("*.json") if not p.name.startswith("probe")
              for r in json.loads(p.read_text())]
    return out, tracked, cached


def test_metric_suites_measure_a_class_in_one_setup_cache_and_track_its_rows(installed, tmp_path, monkeypatch, capfd):
    """suites/layer.py's LayerForwardMetrics under asv: its parameter sets are measured once, in one
    setup_cache process, and the tracked medians are the runner's rows. The same quick asv run has the example
    package installed (found through its entry point) and the broken example named in MFBENCH_PROVIDER_MODULES:
    the example's tracked medians are the runner's rows too; the broken providers' sets fail (no value), and the
    run goes on. (One asv run for both claims: each run is a dozen seconds of asv's processes.)"""
    monkeypatch.setenv("PYTHONPATH", str(installed))
    monkeypatch.setenv("MFBENCH_PLUGINS", "1")
    monkeypatch.setenv("MFBENCH_PROVIDER_MODULES", str(asvrun.ROOT / "examples" / "broken_provider.py"))
    out, tracked, cached = _layer_forward_metrics(tmp_path, monkeypatch, capfd,
                                                  "reference,dense,example_gather,broken_raises,broken_wrong")
    assert out.count("Setting up layer:") == 1, out
    rows = {r["provider"]: r["value"] for r in cached if r["metric"] == "time"}
    failed = {r["flags"] for r in cached if r["metric"] == "failed"}
    assert set(tracked) == {"reference", "dense", "example_gather", "broken_raises", "broken_wrong"}, tracked
    assert set(rows) == {"reference", "dense", "example_gather"} and all(v > 0 for v in rows.values()), out
    assert {provider: tracked[provider] for provider in rows} == rows
    assert tracked["broken_raises"] is None and tracked["broken_wrong"] is None, tracked  # asv: failed
    assert any("this kernel is broken on purpose" in f for f in failed), failed
    assert any("float64 check: relative error of y" in f for f in failed), failed


def test_every_tracked_metric_is_better_lower_so_a_drop_in_accuracy_is_a_regression():
    """asv's regression feed (regressions.json, the Atom feed) only looks for increases: every track_
    benchmark must be a quantity that is better lower. A 20% drop in accuracy must then be a regression."""
    import inspect

    from asv.step_detect import detect_regressions, detect_steps

    import suites.accuracy
    import suites.block
    import suites.budget
    import suites.layer
    import suites.model
    from mfbench.store.results import HIGHER_IS_BETTER

    names = {name.removeprefix("track_") for module in (suites.accuracy, suites.block, suites.budget, suites.layer,
                                                          suites.model)
             for _, cls in inspect.getmembers(module, inspect.isclass) for name in dir(cls) if name.startswith("track_")}
    assert {"error_rate", "bucket_disagreement", "roofline_gap", "seconds_per_gb"} <= names
    assert not names & HIGHER_IS_BETTER and not {n.removesuffix("_time") for n in names} & HIGHER_IS_BETTER
    accuracy = [0.90] * 6 + [0.72] * 6  # commits in order; the last six lost 20%
    error_rate = [1 - a for a in accuracy]
    _, _, regressions = detect_regressions(detect_steps(error_rate))
    assert regressions and regressions[0][2] == pytest.approx(0.10) and regressions[0][3] == pytest.approx(0.28)
    assert detect_regressions(detect_steps(accuracy))[2] is None  # the raw accuracy would have hidden it


def test_a_silent_stretch_of_asv_is_reported(capfd):
    """A benchmark that runs for minutes prints nothing under asv: the bench says it is still going."""
    code = "import time; print('[ 23.68%] ··· model.TrainStep.time_call', flush=True); time.sleep(2.6); print('done')"
    done = asvrun.streamed([sys.executable, "-c", code], heartbeat_s=1.0)
    out = capfd.readouterr().out.splitlines()
    assert done.returncode == 0 and out[0].endswith("model.TrainStep.time_call") and out[-1] == "done"
    beats = [line for line in out if line.startswith("  ... still running")]
    assert len(beats) >= 2 and "since: [ 23.68%] ··· model.TrainStep.time_call" in beats[0], out
