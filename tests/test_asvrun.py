"""The asv driver's decisions that need no benchmark run: which files count, the no-change path, the report."""

import math
import subprocess
import time

import pytest

from mfbench import asvrun, dashboard


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


def test_changed_kernel_files(repo, monkeypatch):
    monkeypatch.setattr(asvrun, "ROOT", repo)
    (repo / "README.md").write_text("changed\n")
    _git(repo, "commit", "-qam", "docs")
    assert asvrun.changed_kernel_files("HEAD~1", "HEAD", asvrun.KERNEL_GLOBS) == []
    (repo / "mfbench" / "kernels" / "lookup.py").write_text("A = 2\n")
    _git(repo, "commit", "-qam", "kernel")
    assert asvrun.changed_kernel_files("HEAD~2", "HEAD", asvrun.KERNEL_GLOBS) == ["mfbench/kernels/lookup.py"]


def test_alert_without_kernel_change_exits_zero_quickly(repo, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(asvrun, "ROOT", repo)
    (repo / "README.md").write_text("changed\n")
    _git(repo, "commit", "-qam", "docs")
    report = tmp_path / "report.md"
    start = time.perf_counter()
    code = asvrun.main(["alert", "--base", "HEAD~1", "--report", str(report)])
    assert code == 0 and time.perf_counter() - start < 5
    assert "No kernel file changed" in capsys.readouterr().out
    assert "No kernel file changed" in report.read_text()


def test_bench_rows_name_the_tree_as_it_was_before_asv_wrote_its_files(repo, monkeypatch):
    """asv rewrites results/asv/benchmarks.json, a tracked file; the rows must still call a clean tree clean."""
    from mfbench.measure.fingerprint import git_commit

    monkeypatch.setattr(asvrun, "ROOT", repo)
    for name in ("MFBENCH_COMMIT", "MFBENCH_DIRTY", "MFBENCH_ASV_CACHE"):  # main() sets them
        monkeypatch.delenv(name, raising=False)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    def asv_writes_its_files(tree, commit, results_dir, bench, quick):
        (repo / "README.md").write_text("asv's output\n")
        return results_dir

    named = {}

    def import_rows(results_dir, commit, directory, cache):
        git_commit.cache_clear()
        named["tree"] = git_commit(str(repo))
        return 0

    monkeypatch.setattr(asvrun, "run_commit", asv_writes_its_files)
    monkeypatch.setattr(asvrun, "import_to_tables", import_rows)
    try:
        assert asvrun.main(["bench"]) == 0
    finally:
        git_commit.cache_clear()
    assert named["tree"] == (head, False)


def test_bad_ref_is_a_one_line_error(repo, monkeypatch, capsys):
    monkeypatch.setattr(asvrun, "ROOT", repo)
    assert asvrun.main(["alert", "--base", "no-such-ref"]) == 2
    assert "no-such-ref" in capsys.readouterr().err


def test_max_rounds_below_rounds_is_a_one_line_error(capsys):
    assert asvrun.main(["alert", "--base", "HEAD", "--rounds", "3", "--max-rounds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "mfbench: error: --max-rounds (2) must be at least --rounds (3)"


def test_report_lists_regressions_first():
    rows = [
        {"benchmark": "layer.LayerForward.time_call", "params": {"provider": "triton"}, "before": 1.0, "after": 1.25,
         "ratio": 1.25, "before_iqr": (0.99, 1.01), "after_iqr": (1.24, 1.26), "unit": "seconds", "verdict": "regressed"},
        {"benchmark": "layer.LayerForward.time_call", "params": {"provider": "dense"}, "before": 1.0, "after": 1.0,
         "ratio": 1.0, "before_iqr": (None, None), "after_iqr": (None, None), "unit": "seconds", "verdict": "same"},
    ]
    text = asvrun.report(rows, "a" * 40, "b" * 40, ["mfbench/kernels/lookup.py"], 1.1)
    assert "**1 regression(s)** in 2 compared measurements" in text
    lines = [line for line in text.splitlines() if line.startswith("| layer")]
    assert "regressed" in lines[0] and "1.250" in lines[0] and "same" in lines[1]
    paired = {asvrun._key("layer.LayerForward.time_call", {"provider": "triton"}): [math.log(1.2), math.log(1.3)]}
    text = asvrun.report(rows, "a" * 40, "b" * 40, ["mfbench/kernels/lookup.py"], 1.1, paired, "Rounds: 2 base/head pairs.")
    assert "Rounds: 2 base/head pairs." in text
    first = next(line for line in text.splitlines() if line.startswith("| layer"))
    assert first.endswith("| 1.249 ± 0.050 (2 rounds) |"), first


@pytest.mark.parametrize("ratios, open_", [
    ([1.2, 1.21], False),   # clearly above x1.1
    ([1.0, 0.99], False),   # clearly below
    ([1.2], True),          # one round proves nothing
    ([1.12, 1.09], True),   # straddles the threshold
    ([1.25, 0.95], True),   # rounds disagree: the spread keeps it open
    ([1.25, 1.02, 1.2, 1.22, 1.21, 1.19, 1.2, 1.21], False),  # ... until enough rounds agree
])
def test_rounds_continue_while_the_ratio_is_not_clear_of_the_threshold(ratios, open_):
    assert asvrun.unsettled([math.log(r) for r in ratios], 1.1) is open_


def test_a_round_pairs_the_medians_of_its_new_samples():
    assert asvrun.paired_log_ratio([1.0, 1.0, 5.0], [1.2, 1.2, 0.1]) == pytest.approx(math.log(1.2))
    assert asvrun.paired_log_ratio([], [1.0]) is None and asvrun.paired_log_ratio([1.0], None) is None
    assert [asvrun.round_order(r, "b", "h") for r in range(3)] == [("b", "h"), ("h", "b"), ("b", "h")]


def test_netlog_reader_tolerates_a_truncated_log(tmp_path):
    log = tmp_path / "netlog.json"
    log.write_text('{"constants": {}, "events": ['
                   '{"source": {"id": 1}, "params": {"url": "http://127.0.0.1:8000/index.json"}},'
                   '{"source": {"id": 1}, "params": {"initiator": "http://127.0.0.1:8000"}},'
                   '{"source": {"id": 2}, "params": {"url": "https://update.example.org/x"}},'
                   '{"source": {"id": 2}, "params": {"initiator": "not an origin"}},'
                   '{"source": {"id": 3}, "params": {"url": "https://cdn.example.org/x.js"}},'
                   '{"source": {"id": 3}, "params": {"initiator": "http://127.0.0.1:8000"}},')
    requests = dashboard._netlog_requests(log)
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
               if v.benchmark == "accuracy.SnapshotAccuracy.track_accuracy"}
    rows = {r["provider"]: r["value"] for p in (tmp_path / "cache").glob("*.json") if not p.name.startswith("probe")
            for r in json.loads(p.read_text()) if r["metric"] == "accuracy"}
    assert set(tracked) == {"reference", "embedding_bag", "dense"}
    assert tracked == rows
    assert tracked["embedding_bag"] == tracked["reference"] > tracked["dense"]


def test_metric_suites_measure_a_class_in_one_setup_cache_and_track_its_rows(tmp_path, monkeypatch, capfd):
    """suites/layer.py's LayerForwardMetrics under asv: its parameter sets are measured once, in one
    setup_cache process, and the tracked medians are the runner's rows."""
    import json

    monkeypatch.setenv("MFBENCH_ASV_PROVIDERS", "reference,dense")
    monkeypatch.setenv("MFBENCH_ASV_DEVICES", "cpu")
    monkeypatch.setenv("MFBENCH_ASV_SEQS", "64")
    monkeypatch.setenv("MFBENCH_ASV_PRESET", "micro")
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path / "cache"))
    head = asvrun._git("rev-parse", "HEAD")
    asvrun.run_commit(asvrun.ROOT, head, tmp_path / "asv", r"^layer\.LayerForwardMetrics", quick=True)
    out = capfd.readouterr().out
    assert out.count("Setting up layer:") == 1, out
    tracked = {v.params["provider"]: v.value for v in asvrun.asv_values(tmp_path / "asv", asvrun.machine_name(), head)
               if v.benchmark == "layer.LayerForwardMetrics.track_median_time"}
    rows = {r["provider"]: r["value"] for p in (tmp_path / "cache").glob("*.json") if not p.name.startswith("probe")
            for r in json.loads(p.read_text()) if r["metric"] == "time"}
    assert set(tracked) == {"reference", "dense"} and all(v > 0 for v in tracked.values())
    assert tracked == rows
