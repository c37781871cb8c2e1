"""The asv suites' shared machinery (mfbench/shells/suite.py): one process measures a class's parameter sets."""

import json
import math

import pytest

from mfbench.bench.measurement import Measurement
from mfbench.shells import suite


def _measured(item, seconds):
    m = Measurement(item)
    m.add("time", seconds, "s")
    return m


def test_measure_all_measures_each_set_once_and_marks_the_sets_that_cannot_run(monkeypatch):
    calls = []

    def measure(item, bench):
        calls.append((item.provider, item.seq))
        return _measured(item, 1e-3 * item.seq)

    monkeypatch.setattr(suite, "measure", measure)
    monkeypatch.delenv("MFBENCH_ASV_CACHE", raising=False)
    params = (["cpu"], ["dense", "reference"], [64, 128], ["float32", "float16"])
    measured = suite.measure_all("layer", "forward", params)

    assert sorted(calls) == [("dense", 64), ("dense", 128), ("reference", 64), ("reference", 128)]
    assert len(measured) == 8  # every combination has an answer, float16 on the CPU a 'skipped' one
    skipped = measured[json.dumps(["layer", "forward", "cpu", "dense", 64, "float16", suite.PRESET])]
    assert skipped[0]["metric"] == "skipped" and "float16 is not benchmarked on cpu" in skipped[0]["flags"]

    # asv's setup hands the dict back to each parameter set: nothing is measured again, a skip stays a skip
    calls.clear()
    case = suite.Prepared("layer", "forward", "cpu", "reference", 128, "float32", probe=False, measured=measured)
    assert case.metric("time") == pytest.approx(0.128) and math.isnan(case.metric("energy_per_token"))
    assert calls == []
    with pytest.raises(NotImplementedError, match="float16 is not benchmarked"):
        suite.Prepared("layer", "forward", "cpu", "dense", 64, "float16", probe=False, measured=measured)


@pytest.mark.parametrize("cache", [False, True])
def test_a_set_that_cannot_run_is_skipped_with_or_without_a_cache(cache, monkeypatch, tmp_path):
    """asv run directly has no MFBENCH_ASV_CACHE: the probe's verdict must still reach asv as n/a."""
    if cache:
        monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path))
    else:
        monkeypatch.delenv("MFBENCH_ASV_CACHE", raising=False)
    monkeypatch.setattr(suite.providers, "readiness", lambda name, device, dtype: ("no such device here", None))
    with pytest.raises(NotImplementedError, match="no such device here"):
        suite.Prepared("layer", "forward", "cpu", "triton", 64, "float32", probe=True)
    monkeypatch.setattr(suite.providers, "readiness", lambda name, device, dtype: (None, "wrong values"))
    with pytest.raises(RuntimeError, match="wrong values"):
        suite.Prepared("layer", "forward", "cpu", "dense", 64, "float32", probe=True)


def test_measure_all_adds_kernel_times_in_a_last_pass_and_keeps_a_failed_set_apart(monkeypatch, tmp_path):
    order = []

    def measure(item, bench):
        order.append(("time", item.provider))
        if item.provider == "embedding_bag":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return _measured(item, 1e-3)

    def kernel_pass(items, device, progress):
        for item in items:
            order.append(("kernels", item.provider))
            m = Measurement(item)
            m.add("kernel_time", 1e-4, "s")
            yield m

    monkeypatch.setattr(suite, "measure", measure)
    monkeypatch.setattr(suite, "kernel_pass", kernel_pass)
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path))
    params = (["cpu"], ["dense", "embedding_bag", "reference"], [64], ["float32"])
    measured = suite.measure_all("layer", "forward", params)

    assert order == [("time", "dense"), ("time", "embedding_bag"), ("time", "reference"),
                     ("kernels", "dense"), ("kernels", "reference")]
    case = suite.Prepared("layer", "forward", "cpu", "reference", 64, "float32", probe=False)  # from the file cache
    assert [r["metric"] for r in case.rows()] == ["time", "kernel_time"] and case.metric("kernel_time") == 1e-4
    failed = measured[json.dumps(["layer", "forward", "cpu", "embedding_bag", 64, "float32", suite.PRESET])]
    assert failed == [{"metric": "failed", "value": failed[0]["value"],
                       "flags": "failed: RuntimeError: CUDA error: an illegal memory access was encountered"}]
    with pytest.raises(RuntimeError, match="illegal memory access"):  # asv reports that set failed, not skipped
        suite.Prepared("layer", "forward", "cpu", "embedding_bag", 64, "float32", probe=False, measured=measured)


def test_measure_all_reads_a_warm_cache_without_measuring_or_adding_kernel_rows_again(monkeypatch, tmp_path):
    measured_now = []
    monkeypatch.setattr(suite, "measure", lambda item, bench: measured_now.append(item) or _measured(item, 1e-3))

    def kernel_pass(items, device, progress):
        for item in items:
            m = Measurement(item)
            m.add("kernel_time", 1e-4, "s")
            yield m

    monkeypatch.setattr(suite, "kernel_pass", kernel_pass)
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path))
    params = (["cpu"], ["dense"], [64], ["float32"])
    first = suite.measure_all("layer", "forward", params)
    again = suite.measure_all("layer", "forward", params)
    assert len(measured_now) == 1 and first == again
    assert [r["metric"] for r in next(iter(again.values()))] == ["time", "kernel_time"]


def test_evaluate_all_keeps_going_past_a_provider_that_fails(monkeypatch, tmp_path):
    from mfbench.store import snapshots

    real = snapshots.evaluate

    def evaluate(snapshot, names, device, *args, **kwargs):
        if "embedding_bag" in names:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(snapshot, names, device, *args, **kwargs)

    monkeypatch.setattr(snapshots, "evaluate", evaluate)
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path))
    measured = suite.evaluate_all((["cpu"], ["embedding_bag", "reference", "dense"], ["mqar"]))

    answers = {json.loads(key)[2]: rows for key, rows in measured.items()}
    assert set(answers) == {"embedding_bag", "reference", "dense"}
    assert answers["embedding_bag"][0]["metric"] == "failed"
    assert 0 <= suite._metric(answers["reference"], "accuracy") <= 1
    with pytest.raises(RuntimeError, match="device-side assert"):  # what asv's setup meets for that set
        suite.SnapshotCase("cpu", "embedding_bag", "mqar", measured=measured)
    assert suite.SnapshotCase("cpu", "dense", "mqar", measured=measured).metric("accuracy") == \
        suite._metric(answers["dense"], "accuracy")
