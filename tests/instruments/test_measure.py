import math

import pytest
import torch

from mfbench.cost import traffic
from mfbench.instruments import energy, memory, timing
from mfbench.instruments.ceilings import Ceilings, ceilings


def test_host_issue_time_is_the_median_call_and_host_bound_compares_it_with_the_figure():
    import time

    t = timing.host_issue_seconds(lambda: time.sleep(0.004), "cpu", calls=5)
    assert 0.004 <= t < 0.004 + 0.05
    fig = timing.Timing(1e-3, 0.9e-3, 1.1e-3, 0.8e-3, 1.2e-3, 10, "do_bench", host_s=0.85e-3)
    assert fig.host_bound and not timing.Timing(1e-3, 0.9e-3, 1.1e-3, 0.8e-3, 1.2e-3, 10, "do_bench", host_s=0.5e-3).host_bound
    on_cpu = timing.time_callable(lambda: None, "cpu", min_run_time_s=0.01)
    assert not on_cpu.host_bound and on_cpu.host_s is None and on_cpu.kernel_s is None  # GPU figures only
    assert timing.kernel_seconds(lambda: None, "cpu") is None


@pytest.mark.gpu
def test_a_launch_bound_call_is_host_bound_and_a_large_matmul_is_not():
    x = torch.ones(16, device="cuda")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)

    def many_tiny_kernels():
        y = x
        for _ in range(200):
            y = y + 1
        return y

    tiny, big = timing.time_callable(many_tiny_kernels, "cuda"), timing.time_callable(lambda: a @ a, "cuda")
    assert tiny.host_bound and tiny.host_s > 0, tiny
    assert not big.host_bound and big.host_s < 0.2 * big.median_s, big
    # a call that waits for the device inside has no host figure (it would hold the device's time)
    waits = timing.time_callable(lambda: (a @ a).sum().item(), "cuda")
    assert waits.host_s is None and not waits.host_bound, waits
    # timing never runs the profiler; the kernels' own time comes from kernel_seconds, after it: 200
    # one-element adds run in a small part of the launch-bound figure, a large matmul's kernel is the figure
    assert tiny.kernel_s is None and big.kernel_s is None
    tiny_k, big_k = timing.kernel_seconds(many_tiny_kernels, "cuda"), timing.kernel_seconds(lambda: a @ a, "cuda")
    assert 0 < tiny_k < 0.5 * tiny.median_s, (tiny_k, tiny)
    assert 0.8 * big.median_s < big_k < 1.25 * big.median_s, (big_k, big)
    # the same CUPTI pass counts launches: 200 adds are 200 kernels, a copy is no kernel
    assert timing.device_activity(many_tiny_kernels, "cuda", calls=2).kernels == 200
    y = torch.empty_like(x)
    copy = timing.device_activity(lambda: y.copy_(x), "cuda")  # a contiguous copy is a cudaMemcpyAsync
    assert copy.busy_s > 0 and copy.kernels == 0, copy


@pytest.mark.gpu
def test_a_call_that_cannot_be_captured_leaves_the_process_able_to_capture_and_draw():
    """On the H200 the reference's backward could not be captured, and every item after it in the run failed
    with "Offset increment outside graph capture encountered unexpectedly"."""
    x = torch.randn(1024, device="cuda")
    with pytest.raises(timing.NotCapturable, match="synchronises with the device inside"):
        timing.graph_samples(lambda: x.sum().item(), "cuda", calls=2, replays=5)  # refused before capture
    seen = []

    def fails_inside_the_capture():  # warm-ups pass; under capture a device sync breaks it
        seen.append(1)
        y = torch.randn(16, device="cuda") + x[:16]  # a random draw, as a layer's input is made
        if len(seen) > 3:
            torch.cuda.synchronize()
        return y

    with pytest.raises(Exception):
        timing.graph_samples(fails_inside_the_capture, "cuda", calls=2, replays=5)
    assert len(seen) == 4  # it did fail inside the capture, after the three warm-up calls
    assert torch.randn(16, device="cuda").isfinite().all()  # random draws work again
    assert len(timing.graph_samples(lambda: x * 2, "cuda", calls=2, replays=5)) == 5


def test_timing_reports_median_and_spread():
    t = timing.time_callable(lambda: torch.randn(64, 64) @ torch.randn(64, 64), "cpu", min_run_time_s=0.05)
    assert 0 < t.q1_s <= t.median_s <= t.q3_s and t.min_s <= t.median_s <= t.max_s
    assert t.samples >= 1 and t.method.startswith("torch.utils.benchmark")


def test_timing_tracks_work():
    small = timing.time_callable(lambda: torch.ones(10_000).sum(), "cpu", min_run_time_s=0.05)
    big = timing.time_callable(lambda: torch.ones(10_000_000).sum(), "cpu", min_run_time_s=0.05)
    assert big.median_s > 10 * small.median_s


def test_ceilings_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MFBENCH_CACHE", str(tmp_path))
    first = ceilings("cpu")
    assert first.copy_bytes_per_s > 1e8 and first.matmul_flops_per_s > 1e8
    assert first.onchip_bytes_per_s is None and first.measured_utc
    assert (tmp_path / "ceilings.json").exists()
    assert ceilings("cpu") == first  # from the cache, not measured again


@pytest.mark.parametrize("why", ["another machine", "too old", "refresh"])
def test_cached_ceilings_from_elsewhere_or_too_old_are_measured_again(tmp_path, monkeypatch, capsys, why):
    import dataclasses
    import datetime as dt
    import json

    from mfbench.instruments import ceilings as module

    monkeypatch.setenv("MFBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("MFBENCH_CEILINGS_MAX_AGE_DAYS", "2")
    fresh = Ceilings("cpu", 2e10, 1e11, "float32", None, "-", dt.datetime.now(dt.timezone.utc).isoformat(), "t",
                     module.socket.gethostname())
    monkeypatch.setattr(module, "measure", lambda device: fresh)
    first = ceilings("cpu")
    assert first == fresh and ceilings("cpu") == fresh  # the second from the cache
    cache = tmp_path / "ceilings.json"
    entries = json.loads(cache.read_text())
    (key, entry), = entries.items()
    if why == "another machine":
        entry["machine"] = "some-other-host"
    elif why == "too old":
        entry["measured_utc"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).isoformat()
    entry["copy_bytes_per_s"] = 1.0  # what a reuse would give
    cache.write_text(json.dumps({key: entry}))
    capsys.readouterr()
    assert ceilings("cpu", refresh=why == "refresh") == fresh
    said = capsys.readouterr().err
    assert {"another machine": "measured on another machine (some-other-host)",
            "too old": "measured 3 days ago (the limit is 2)", "refresh": ""}[why] in said
    assert json.loads(cache.read_text())[key] == dataclasses.asdict(fresh)


def test_the_test_suite_never_uses_the_developers_ceiling_cache(tmp_path):
    """conftest replaces an exported MFBENCH_CACHE: the suite's ceilings, measured under its own load, must
    not land where real runs read their floors from."""
    import os
    import subprocess
    import sys

    conftest = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py")
    code = f"import os, runpy; runpy.run_path({conftest!r}); print(os.environ['MFBENCH_CACHE'])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MFBENCH_CACHE": str(tmp_path)},
                         capture_output=True, text=True, timeout=120, check=True)
    used = out.stdout.strip().splitlines()[-1]
    assert used != str(tmp_path) and os.path.basename(used).startswith("mfbench-cache-")


def test_floor_picks_the_binding_ceiling():
    ceil = Ceilings("x", copy_bytes_per_s=1e12, matmul_flops_per_s=1e15, matmul_dtype="bf16",
                    onchip_bytes_per_s=5e12, onchip_how="", measured_utc="", torch="")
    lookup = traffic.layer_traffic(2048, 2048, 2048, 8, 2)
    assert lookup.hbm_bytes == 256 * 256 * 2048 * 2 + 2 * 2048 * 2048 * 2
    assert lookup.onchip_bytes == 2048 * 256 * 2048 * 2
    seconds, bound = traffic.floor_seconds(lookup, ceil)
    assert bound == "onchip" and seconds == pytest.approx(lookup.onchip_bytes / 5e12)
    dense = traffic.layer_traffic(4096, 4096, 4096, 8, 2, dense=True)
    assert traffic.floor_seconds(dense, ceil)[1] == "compute"
    back = traffic.layer_traffic(2048, 2048, 2048, 8, 2, "backward")
    assert back.flops == 2 * lookup.flops and back.hbm_bytes > lookup.hbm_bytes
    small = traffic.layer_traffic(64, 64, 64, 8, 4)
    cpu = Ceilings("cpu-2cores", copy_bytes_per_s=1e10, matmul_flops_per_s=1e15, matmul_dtype="float32",
                   onchip_bytes_per_s=None, onchip_how="", measured_utc="", torch="")
    assert traffic.floor_seconds(small, cpu)[1] == "dram"  # a CPU's memory is no HBM
    assert traffic.floor_seconds(small, Ceilings(**{**cpu.as_dict(), "device": "H200"}))[1] == "hbm"
    with pytest.raises(ValueError, match="direction"):
        traffic.layer_traffic(1, 8, 8, 8, 2, "sideways")


def test_energy_without_nvml_says_why_never_zero():
    meter = energy.EnergyMeter("cpu")
    assert not meter.available and "cpu" in meter.reason
    result = energy.measure_energy(lambda: None, "cpu", meter=meter)
    assert result.joules is None and result.joules_per_call is None and result.reason
    meter.begin_window("w")
    window = meter.end_window("w", calls=3)
    assert window.method == "unavailable" and window.joules is None and window.reason
    with pytest.raises(ValueError, match="no open window"):
        meter.end_window("w")


class _FakeNVML:
    """Stands in for pynvml: an energy counter advancing at a fixed 250 W."""

    NVML_CLOCK_SM = 1

    def __init__(self):
        import time

        self._t0 = time.perf_counter()

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        import time

        return int((time.perf_counter() - self._t0) * 250 * 1000)  # mJ

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000  # mW


def test_energy_window_arithmetic(monkeypatch):
    monkeypatch.setattr(energy, "_nvml", lambda: _FakeNVML())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    meter = energy.EnergyMeter(torch.device("cuda", 0))
    assert meter.available and meter.method == "nvml-energy-counter"
    result = energy.measure_energy(lambda: sum(range(20000)), "cuda", min_seconds=0.3, meter=meter)
    assert result.seconds >= 0.3 and result.calls > 1
    assert result.watts == pytest.approx(250, rel=0.05)
    assert result.joules_per_call == pytest.approx(result.joules / result.calls)
    idle = energy.idle_power("cuda", 0.2, meter)
    assert idle.watts == pytest.approx(250, rel=0.05)


def test_power_sampling_fallback(monkeypatch):
    fake = _FakeNVML()

    def no_counter(handle):
        raise RuntimeError("not supported")

    fake.nvmlDeviceGetTotalEnergyConsumption = no_counter
    monkeypatch.setattr(energy, "_nvml", lambda: fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    meter = energy.EnergyMeter(torch.device("cuda", 0))
    assert meter.method == "nvml-power-sampling"
    result = energy.idle_power("cuda", 0.3, meter)
    assert result.watts == pytest.approx(250, rel=0.1)


def test_peak_memory_cpu_sees_a_large_allocation():
    result = memory.peak_memory(lambda: torch.ones(256 * 2**20 // 4).add_(1), "cpu")
    assert result.method == "process-peak-rss"
    assert 200 * 2**20 < result.bytes < 400 * 2**20  # the 256 MiB tensor, give or take the allocator
    small = memory.peak_memory(lambda: torch.ones(1024).add_(1), "cpu")
    assert small.bytes < 64 * 2**20 and not math.isnan(small.bytes)


@pytest.mark.parametrize("errors", [{"grad_x": 1e-9, "y": math.nan}, {"y": math.nan, "grad_x": 1e-9},
                                    {"y": 1e-9, "grad_tables": 0.5}])
def test_a_float64_error_above_tolerance_or_nan_fails_the_item_wherever_it_comes(errors):
    from mfbench.bench.cases import Item
    from mfbench.bench.measure import _check_figures
    from mfbench.bench.measurement import Measurement

    m = Measurement(Item("layer", "forward", 64, "triton", torch.float16))
    m.errors = dict(errors)
    _check_figures(m)
    bad = next(k for k, v in errors.items() if not v <= 1e-2)
    assert m.failed.startswith(f"float64 check: relative error of {bad} "), m.failed
