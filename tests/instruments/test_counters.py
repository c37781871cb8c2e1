"""Nsight Compute counters: the raw CSV parsed and summed per call, and `mfbench profile`'s answers where
ncu is missing or fails (CI has no GPU; a fake ncu stands in for the real one)."""

import math
import os
import stat

import pytest

from mfbench.shells import profile
from mfbench.store import results
from mfbench.instruments import counters

HEADER = ['"ID"', '"Process ID"', '"Process Name"', '"Kernel Name"'] + [f'"{m}"' for m in counters.METRICS]
UNITS = ['""'] * 4 + ['"byte"', '"byte"', '"byte"', '"%"', '"%"', '"%"', '"%"', '"nsecond"']
KERNELS = [  # read, write, L2, L1 hit %, SM %, memory %, occupancy %, ns
    ["0", "77", "python3", "_hash_kernel", "1,000,000", "500000", "2000000", "10", "20", "40", "50", "1000"],
    ["1", "77", "python3", "_forward_kernel", "3000000", "1500000", "30000000", "50", "60", "80", "70", "3000"],
]
RAW = "\n".join(["==PROF== Connected to process 77", ",".join(HEADER), ",".join(UNITS),
                 *(",".join(f'"{v}"' for v in k) for k in KERNELS), "==PROF== Disconnected from process 77"])


def test_a_call_is_the_sum_of_its_kernels():
    call = counters.aggregate(counters.parse(RAW))
    assert call.kernels == 2
    assert (call.dram_read_bytes, call.dram_write_bytes, call.l2_bytes) == (4e6, 2e6, 32e6)
    assert call.dram_bytes == 6e6 and call.duration_s == pytest.approx(4e-6)
    assert call.l1_hit_rate == pytest.approx((10 * 1000 + 50 * 3000) / 4000)  # weighted by duration
    assert call.occupancy == pytest.approx((50 * 1000 + 70 * 3000) / 4000)


@pytest.mark.parametrize("text, message", [
    ("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters",
     "ERR_NVGPUCTRPERM"),
    ("==PROF== Connected to process 1\n==PROF== Disconnected from process 1", "no counter table"),
    (",".join(HEADER) + "\n" + ",".join(UNITS), "profiled no kernel"),
])
def test_no_counters_is_an_error_that_says_why(text, message):
    with pytest.raises(counters.CounterError, match=message):
        counters.parse(text)


def test_the_command_leaves_the_clocks_alone_and_profiles_only_the_marked_call():
    cmd = counters.ncu_command(["python", "x.py"])
    assert cmd[cmd.index("--clock-control") + 1] == "none"
    assert cmd[cmd.index("--replay-mode") + 1] == "range" and cmd[-2:] == ["python", "x.py"]
    assert "--profile-from-start" not in cmd  # ncu refuses it in range replay: start/stop enclose the range
    cmd = counters.ncu_command(["python", "x.py"], replay="kernel")
    assert cmd[cmd.index("--replay-mode") + 1] == "kernel" and cmd[cmd.index("--profile-from-start") + 1] == "off"
    with pytest.raises(ValueError, match="range, kernel"):
        counters.ncu_command(["python", "x.py"], replay="application")


def _fake_ncu(tmp_path, monkeypatch, script: str):
    path = tmp_path / "ncu"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("replay, kernels", [("range", 5.0), ("kernel", 2.0)])
def test_profile_rows_from_a_fake_ncu(tmp_path, monkeypatch, replay, kernels):
    """Kernel replay counts the kernels it profiled; a range is one result, so its launches are counted apart."""
    (tmp_path / "raw.csv").write_text(RAW)
    _fake_ncu(tmp_path, monkeypatch, f"echo \"$@\" > {tmp_path / 'args'}\ncat {tmp_path / 'raw.csv'}\n")
    monkeypatch.setattr(profile, "count_launches", lambda cmd, timeout_s: 5.0)
    run = results.Run("R", "t", "c", False, "m", "H200", "{}")
    rows = profile.profile_rows("smoke", ["triton"], "float16", run, progress=lambda m: None, replay=replay)
    assert f"--replay-mode {replay}" in (tmp_path / "args").read_text()
    got = {(r["params"], r["metric"]): r for r in rows}
    metrics = {m for _, m in got}
    assert {"measured_dram_bytes", "measured_l2_bytes", "measured_l1_hit_rate", "measured_sm_throughput",
            "measured_memory_throughput", "measured_occupancy", "measured_kernels", "modelled_dram_bytes"} <= metrics
    dram = [r for r in rows if r["metric"] == "measured_dram_bytes"]
    method = results.join_flags([profile.METHODS[replay]])
    assert len(dram) == 2 and all(r["value"] == 6e6 and r["flags"] == method for r in dram)
    assert {r["value"] for r in rows if r["metric"] == "measured_kernels"} == {kernels}
    # under range replay ncu's time is the call's elapsed time, gaps included: not the kernels' summed time
    duration = {r["metric"] for r in rows} & {"measured_kernel_time", "measured_call_time"}
    assert duration == {profile.DURATION[replay]} and profile.DURATION["range"] == "measured_call_time"


def test_kernel_launches_are_counted_by_the_target_run_without_ncu(capsys):
    import sys

    said = [sys.executable, "-c", f"import sys; assert sys.argv[1:] == ['--count']; print('x'); "
                                  f"print('{profile.COUNT_PREFIX}477')"]
    assert profile.count_launches(said, timeout_s=60) == 477
    assert math.isnan(profile.count_launches([sys.executable, "-c", "raise SystemExit('no GPU here')"], timeout_s=60))
    assert "kernels were not counted (exit 1: no GPU here)" in capsys.readouterr().err


def test_an_uncounted_call_keeps_its_counters_and_says_why_its_count_is_missing(tmp_path, monkeypatch):
    (tmp_path / "raw.csv").write_text(RAW)
    _fake_ncu(tmp_path, monkeypatch, f"cat {tmp_path / 'raw.csv'}\n")
    monkeypatch.setattr(profile, "count_launches", lambda cmd, timeout_s: float("nan"))
    run = results.Run("R", "t", "c", False, "m", "H200", "{}")
    rows = profile.profile_rows("smoke", ["triton"], "float16", run, progress=lambda m: None)
    counted = [r for r in rows if r["metric"] == "measured_kernels"]
    assert counted and all(math.isnan(r["value"]) and "unavailable: the kernel count failed" in r["flags"] for r in counted)
    assert {r["value"] for r in rows if r["metric"] == "measured_dram_bytes"} == {6e6}


def test_profile_without_ncu_or_with_a_failing_one_says_unavailable(tmp_path, monkeypatch):
    run = results.Run("R", "t", "c", False, "m", "H200", "{}")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ncu anywhere
    (row, _) = profile.profile_rows("smoke", ["triton"], "float16", run, progress=lambda m: None)
    assert row["metric"] == "measured_dram_bytes" and math.isnan(row["value"])
    assert row["flags"] == "unavailable: ncu (Nsight Compute) is not on PATH"
    _fake_ncu(tmp_path, monkeypatch, "echo '==ERROR== ERR_NVGPUCTRPERM - no permission'\nexit 1\n")
    assert "ERR_NVGPUCTRPERM" in profile.profile_one("smoke", 0, "triton", "float16")


def test_profile_hands_over_each_case_as_soon_as_it_is_profiled(monkeypatch):
    """A slow provider takes minutes a case under ncu; a run cut short keeps every case it finished."""
    seen = []
    monkeypatch.setattr(profile, "profile_one", lambda cases, index, name, dtype, replay: seen.append((name, index)) or "skipped")
    run = results.Run("R", "t", "c", False, "m", "H200", "{}")
    batches = profile.profile_batches("smoke", ["reference", "triton"], "float16", run, progress=lambda m: None)
    first = next(batches)
    assert seen == [("reference", 0)] and len(first) == 1  # handed over before the next case starts
    rest = list(batches)
    assert seen == [("reference", 0), ("reference", 1), ("triton", 0), ("triton", 1)] and len(rest) == 3


def test_profile_needs_a_gpu(capsys):
    import torch

    from mfbench.shells.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["profile", "--cases", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err


def _counter_rows(run_id, time_utc, replay, values):
    run = results.Run(run_id, time_utc, "c", False, "m", "H200", "{}")
    params = profile.case_params(profile.CASES["smoke"][0], "float16")
    return [run.row("layer-kernel", params, "triton", metric, value, "B", flags=[profile.METHODS[replay]])
            for metric, value in values.items()]


def test_a_counters_line_is_one_runs_and_names_its_replay_mode():
    import pandas as pd

    old = _counter_rows("OLD", "2026-01-01T00:00:00+00:00", "kernel", {
        "measured_dram_bytes": 9e6, "measured_l2_bytes": 9e6, "measured_l1_hit_rate": 9, "measured_sm_throughput": 9,
        "measured_memory_throughput": 9, "measured_occupancy": 9, "measured_kernels": 477})
    new = _counter_rows("NEW", "2026-02-01T00:00:00+00:00", "range", {
        "measured_dram_bytes": 2e6, "measured_l2_bytes": 3e6, "measured_l1_hit_rate": 4, "measured_sm_throughput": 5,
        "measured_memory_throughput": 6, "measured_occupancy": 7, "measured_kernels": float("nan"),
        "measured_call_time": 0.5e-3})
    table = profile.counters_table(pd.DataFrame(old + new))
    (line,) = [line for line in table.splitlines() if "| triton |" in line]
    assert line.startswith("| fwd s=") and "| range |" in line and "| NEW |" in line
    assert "| nan |" in line and "477" not in line  # the newer run counted none: never the older run's count
    assert "2.0 (" in line and "| 4.0% | 0.5 | 5 |" in line  # the percentages are over the call's 0.5 ms


def test_kernels_md_shows_the_counter_rows_of_the_result_tables(committed):
    """results/kernels.md's counter table is rendered from the committed rows, never copied by hand."""
    text = (committed / "results" / "kernels.md").read_text()
    block = text.split("<!-- counters:begin -->\n")[1].split("<!-- counters:end -->")[0]
    assert block == profile.counters_table(results.load(committed / "results"))
    assert block.count("| triton |") >= 6 and block.count("| dense |") >= 6
