"""GPU state from NVML and CPU energy from RAPL, on fakes of both (the CI machine has neither)."""

import math
from pathlib import Path

import pytest
import torch

from mfbench.store import results
from mfbench.instruments import energy, gpustate, rapl
from mfbench.bench.cases import Item
from mfbench.bench.measure import Bench, cpu_energy, measure
from mfbench.bench.measurement import to_rows


class FakeNvml:
    """The pynvml calls GpuState makes, answering from a dict; a missing key raises like an unsupported query."""

    def __init__(self, **values) -> None:
        self.values = values
        self.locked = None

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def __getattr__(self, name):
        def call(handle, *args):
            key = name.removeprefix("nvmlDeviceGet") + "".join(map(str, args))
            if key not in self.values:
                raise RuntimeError(f"{name} not supported")
            return self.values[key]
        return call

    def nvmlDeviceSetGpuLockedClocks(self, handle, low, high):
        if self.values.get("lock_refused"):
            raise PermissionError("Insufficient Permissions")
        self.locked = (low, high)

    def nvmlDeviceResetGpuLockedClocks(self, handle):
        self.locked = None


def _state(sm: int, reasons: int = 0) -> gpustate.GpuState:
    nvml = FakeNvml(ClockInfo1=sm, ClockInfo2=3201, MaxClockInfo1=1980, Temperature0=41, PowerUsage=350000,
                    EnforcedPowerLimit=700000, CurrentClocksEventReasons=reasons, PersistenceMode=1,
                    EccMode=(1, 1), MigMode=(0, 0))
    return gpustate.GpuState.read("cuda:0", nvml=nvml)


def test_state_reads_clocks_temperature_power_modes():
    state = _state(1980)
    assert (state.sm_clock_mhz, state.mem_clock_mhz, state.temperature_c) == (1980, 3201, 41)
    assert (state.power_w, state.power_limit_w) == (350.0, 700.0)
    assert state.persistence_mode is True and state.ecc_mode is True and state.mig_mode is False
    # an unsupported query is None, never 0
    partial = gpustate.GpuState.read("cuda:0", nvml=FakeNvml(ClockInfo1=1500))
    assert partial.sm_clock_mhz == 1500 and partial.temperature_c is None and partial.power_w is None


def test_throttle_and_clock_drop_are_flagged():
    assert gpustate.throttle_flags(_state(1980), _state(1980)) == []
    assert gpustate.throttle_flags(_state(1980, 0x1), _state(1980, 0x1)) == []  # idle is no slowdown
    assert gpustate.throttle_flags(_state(1980), _state(1980, 0x4 | 0x20)) == ["throttled:sw-power-cap",
                                                                              "throttled:sw-thermal-slowdown"]
    assert gpustate.throttle_flags(_state(1980), _state(1600)) == ["clock-dropped"]
    rows = {m: (v, f) for m, v, _, f in gpustate.state_rows(_state(1980), _state(1600, 0x40))}
    assert rows["sm_clock"] == (1600.0, ["throttled:hw-thermal-slowdown", "clock-dropped"])
    assert rows["gpu_temperature"][0] == 41.0 and rows["gpu_power"] == (350.0, ["limit 700 W"])


def test_no_nvml_gives_an_unavailable_row():
    state = gpustate.GpuState.read("cpu")
    assert state.reason and state.sm_clock_mhz is None
    ((metric, value, _, flags),) = gpustate.state_rows(state, state)
    assert metric == "sm_clock" and math.isnan(value) and flags[0].startswith("unavailable: ")


def test_lock_clocks_is_restored_and_a_refusal_is_said():
    nvml = FakeNvml()
    lock = gpustate.ClockLock("cuda:0", 1500, nvml=nvml)
    with lock.held():
        assert nvml.locked == (1500, 1500)
    assert nvml.locked is None and lock.flag == "clock-locked:1500MHz"
    refused = gpustate.ClockLock("cuda:0", 1500, nvml=FakeNvml(lock_refused=True))
    with refused.held():
        pass
    assert refused.flag == "clock-lock-refused" and "Insufficient Permissions" in refused.refused


def powercap(root: Path, package_uj: int, dram_uj: int, readable: bool = True) -> Path:
    """A fake /sys/class/powercap: one package zone with a dram subzone (and a core one, ignored)."""
    for zone, name, uj in (("intel-rapl:0", "package-0", package_uj), ("intel-rapl:0:0", "core", 5),
                           ("intel-rapl:0:1", "dram", dram_uj)):
        (root / zone).mkdir(parents=True, exist_ok=True)
        (root / zone / "name").write_text(name + "\n")
        (root / zone / "energy_uj").write_text(f"{uj}\n")
        (root / zone / "max_energy_range_uj").write_text("262143328850\n")
        if not readable:
            (root / zone / "energy_uj").chmod(0)
    return root


def test_rapl_reads_package_and_dram_and_handles_a_wrap(tmp_path):
    root = powercap(tmp_path, 1_000_000, 500_000)
    meter = rapl.RaplMeter(root)
    assert meter.available and {z.domain for z in meter.zones} == {"package", "dram"}
    start = meter.begin()
    (root / "intel-rapl:0" / "energy_uj").write_text("3500000\n")  # +2.5 J
    (root / "intel-rapl:0:1" / "energy_uj").write_text("100\n")  # wrapped: +262143.3289 J - 0.5 J + 1e-4 J
    window = meter.end(start)
    assert window.joules["package"] == pytest.approx(2.5)
    assert window.joules["dram"] == pytest.approx((262143328850 - 500_000 + 100) / 1e6)


def test_rapl_less_machines_say_why(tmp_path):
    assert "no powercap tree" in rapl.RaplMeter(tmp_path / "none").reason
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no package or dram zone" in rapl.RaplMeter(empty).reason
    import os

    if os.geteuid() != 0:  # root reads a file whatever its mode
        assert "not readable" in rapl.RaplMeter(powercap(tmp_path / "locked", 1, 1, readable=False)).reason


def test_measured_rows_carry_cpu_energy_gross_and_net_of_idle(tmp_path, monkeypatch):
    """A CPU item measured with a fake RAPL tree whose counters climb with wall time (20 W package, 5 W
    DRAM): the rows give J/token for both domains, and net of an idle window at 20 W / 5 W, about zero."""
    import time

    root = powercap(tmp_path, 0, 0)
    t0 = time.perf_counter()

    def climbing(self):
        seconds = time.perf_counter() - t0
        return [int(seconds * watts * 1e6) for watts in (20, 5)]

    monkeypatch.setattr(rapl.RaplMeter, "_read", climbing)
    meter = rapl.RaplMeter(root)
    assert [z.domain for z in meter.zones] == ["package", "dram"]
    gpu = energy.EnergyMeter("cpu")
    idle = energy.idle_power("cpu", 0.2, gpu, meter)
    assert idle.cpu.joules["package"] == pytest.approx(0.2 * 20, rel=0.2)
    from mfbench.instruments.ceilings import Ceilings
    from mfbench.core.model import ModelConfig

    cfg = ModelConfig.preset("micro")
    run = results.Run("R", "t", "c", False, "m", "cpu", "{}")
    ceil = Ceilings("cpu", 1e10, 1e11, "float32", None, "", "now", torch.__version__)
    bench = Bench(torch.device("cpu"), ceil, 0.2, meter=gpu, rapl=meter, idle=idle)
    rows = to_rows(measure(Item("layer", "forward", 64, "embedding_bag", torch.float32, cfg=cfg), bench), run)
    got = {r["metric"]: r for r in rows}
    tokens = 64
    package = got["cpu_package_energy_per_token"]
    calls = package["samples"]
    assert package["value"] == pytest.approx(20 * 0.2 / calls / tokens, rel=0.5) and package["flags"] == "rapl"
    assert got["dram_energy_per_token"]["value"] == pytest.approx(package["value"] / 4, rel=0.05)
    assert abs(got["cpu_package_energy_per_token_net"]["value"]) < 0.05 * package["value"]
    assert math.isnan(got["energy_per_token"]["value"])  # the GPU's: no NVML on a CPU


def test_without_rapl_the_row_says_unavailable(tmp_path):
    meter = rapl.RaplMeter(tmp_path / "none")
    result = energy.EnergyResult("unavailable", None, 0.0, 1, "no NVML")
    ((metric, value, flags),) = cpu_energy(result, None, 64, meter)
    assert metric == "cpu_package_energy_per_token" and math.isnan(value)
    assert flags == [f"unavailable: {meter.reason}"]  # a row escapes the separator when it joins flags


def test_lock_clocks_on_the_cpu_is_a_usage_error(capsys, tmp_path):
    from mfbench.shells.cli.main import main

    assert main(["run", "--preset", "smoke", "--device", "cpu", "--lock-clocks", "1500",
                 "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lock-clocks fixes a GPU's SM clock" in err
    assert not (tmp_path / "results.parquet").exists()
