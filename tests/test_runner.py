"""`mfbench run`, `show` and `compare` end to end on the CPU."""

import json

import pytest

from mfbench.core import providers
from mfbench.store import results
from mfbench.bench import cases, runner
from mfbench.instruments.ceilings import Ceilings
from mfbench.instruments.timing import Timing
from mfbench.shells.cli.main import main


def test_smoke_run_rows(smoke_run):
    frame = results.load(smoke_run)
    assert frame["run_id"].nunique() == 1
    expected = {(b, d) for b, d in cases.PRESETS["smoke"].items}
    times = frame[frame["metric"] == "time"]
    seen = {(b, json.loads(p)["direction"]) for b, p in zip(times["benchmark"], times["params"])}
    assert seen == expected
    assert (times["value"] > 0).all() and (times["spread_low"] <= times["value"]).all()
    # every provider either measured or skipped with its reason, never silently missing
    measured = frame[~frame["benchmark"].isin(["ceiling", "idle"])]
    for (bench, params), group in measured.groupby(["benchmark", "params"]):
        assert set(group["provider"]) == set(providers.names())
    # one process has no process group: the sharded provider is skipped, saying why
    sharded = frame[frame["provider"] == "sharded"]
    assert (sharded["metric"] == "skipped").all() and sharded["flags"].str.contains("torchrun").all()
    skipped = frame[frame["metric"] == "skipped"]
    assert (skipped["flags"].str.len() > 0).all()
    ceilings = frame[frame["benchmark"] == "ceiling"]
    assert set(ceilings["metric"]) == {"copy_bandwidth", "matmul_rate", "onchip_bandwidth"}
    assert (ceilings.loc[ceilings["metric"] != "onchip_bandwidth", "value"] > 0).all()
    energy = frame[frame["metric"] == "energy_per_token"]
    assert energy["value"].isna().all() and energy["flags"].str.startswith("unavailable: ").all()
    counted = frame[(frame["metric"] == "flops_counted") & (frame["provider"] == "dense")]
    analytic = frame[(frame["metric"] == "flops_analytic") & (frame["provider"] == "dense")]
    layer = lambda f: f[f["benchmark"] == "layer"]["value"].iloc[0]
    assert layer(counted) == layer(analytic)  # nn.Linear: FlopCounterMode equals the 2-per-MAC formula


def test_show_and_compare(smoke_run, capsys):
    assert main(["show", "--results-dir", str(smoke_run)]) == 0
    assert main(["show", "latest", "--results-dir", str(smoke_run)]) == 0
    out = capsys.readouterr().out
    assert "x dense" in out and "layer" in out
    run_id = results.load(smoke_run)["run_id"].iloc[0]
    assert main(["compare", run_id, "latest", "--results-dir", str(smoke_run)]) == 0
    out = capsys.readouterr().out
    assert "B/A" in out and "1.000" in out and " same" in out


def test_compare_sets_kernel_time_beside_a_host_bound_time(tmp_path, capsys):
    params = {"direction": "forward", "seq": 2048}
    rows = []
    for run_id, t, kern, flags in (("A", 1.0e-3, 0.20e-3, "host-bound"), ("B", 1.5e-3, 0.21e-3, "")):
        run = results.Run(run_id, "t", "c", False, "m", "H100", "{}")
        rows += [run.row("layer", params, "triton", "time", t, "s", spread_low=t * 0.98, spread_high=t * 1.02,
                         flags=[flags] if flags else []),
                 run.row("layer", params, "triton", "kernel_time", kern, "s")]
    results.append(rows, tmp_path)
    assert main(["compare", "A", "B", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 1.5x slower by the figure, but A's figure was the host's and the kernels moved 5%
    assert "slower (host-bound)" in out and "kernel B/A" in out and "1.050" in out, out


def test_run_summary_shows_kernel_time_only_where_measured():
    import pandas as pd

    from mfbench.report.summaries import run_summary

    run = results.Run("R", "t", "c", False, "m", "H100", "{}")
    params = {"direction": "forward", "seq": 2048}
    rows = [run.row("layer", params, "triton", "time", 1e-3, "s"), run.row("layer", params, "dense", "time", 5e-4, "s")]
    assert "kernel ms" not in run_summary(pd.DataFrame(rows))  # a CPU run: no column of dashes
    rows.append(run.row("layer", params, "triton", "kernel_time", 2.5e-4, "s"))
    lines = run_summary(pd.DataFrame(rows)).splitlines()
    assert "kernel ms" in lines[0]
    triton = next(line for line in lines if "triton" in line).split()
    assert "0.25" in triton and "2.00" in triton  # kernel ms beside the median, ratio to dense from the median
    rows[1] = run.row("layer", params, "dense", "time", 5e-4, "s", flags=["floor:hbm", "time-below-floor"])
    dense = next(line for line in run_summary(pd.DataFrame(rows)).splitlines()[1:] if " dense " in line)
    assert "0.5 IMPOSSIBLE" in dense  # a time below its floor is marked where it is printed


@pytest.mark.parametrize("args,message", [
    (["run", "--preset", "huge"], "unknown preset"),
    (["run", "--seq", "12,x"], "whole numbers"),
    (["run", "--seq", "0"], "positive"),
    (["run", "--benchmarks", "layer,nope"], "unknown benchmark"),
    (["show", "nope-run"], "not found"),
])
def test_run_mistakes(args, message, capsys, tmp_path):
    results.append([results.Run.start("cpu").row("layer", {"direction": "forward", "seq": 1}, "dense", "time",
                                                 1.0, "s")], tmp_path)
    assert main([*args, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_refuses_a_corrupt_table_before_measuring(tmp_path, capsys):
    (tmp_path / results.TABLE).write_bytes(b"garbage")
    assert main(["run", "--preset", "smoke", "--results-dir", str(tmp_path)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert (tmp_path / results.TABLE).read_bytes() == b"garbage"


def test_sanity_flag_on_impossible_bandwidth(monkeypatch, tmp_path):
    from mfbench.instruments import ceilings as ceil_mod

    tiny = ceil_mod.Ceilings("cpu", copy_bytes_per_s=1.0, matmul_flops_per_s=1e12, matmul_dtype="float32",
                             onchip_bytes_per_s=None, onchip_how="", measured_utc="", torch="")
    monkeypatch.setattr(ceil_mod, "ceilings", lambda device, refresh=False: tiny)
    code = main(["run", "--preset", "smoke", "--benchmarks", "layer", "--providers", "dense",
                 "--results-dir", str(tmp_path)])
    assert code == 0
    frame = results.load(tmp_path)
    bw = frame[frame["metric"] == "achieved_bandwidth"]
    assert bw["flags"].str.contains("above-copy-ceiling").all()
    roof = frame[frame["metric"] == "pct_of_roofline"]
    assert len(roof) and (roof["value"] > 100).all() and roof["flags"].str.contains("above-roofline").all()


def _items(kind, providers_):
    import torch

    from mfbench.core.model import ModelConfig

    if kind == "layer":
        return [cases.Item("layer", "forward", 64, p, torch.float16, cfg=ModelConfig.preset("micro")) for p in providers_]
    return cases.kernel_plan([cases.Case("forward", 64, 32, 32), cases.Case("backward", 64, 32, 32)], providers_,
                             torch.float16)


@pytest.mark.parametrize("kind", ["layer", "layer-kernel"])  # mfbench run's items, and mfbench layers'
def test_kernel_times_come_after_every_other_measurement_of_the_run(monkeypatch, kind):
    """The profiler stays attached to a process after kernel_seconds, so on a GPU the run times every
    item first and profiles them last; an item failing in that pass loses its kernel time only."""
    import torch

    from mfbench.bench import measure
    from mfbench.bench.measurement import Measurement, merge

    order = []

    def measure_one(item, bench):
        order.append(("time", item.provider))
        return Measurement(item, timing=Timing(1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 10, "x"))

    def kernel_time(item, device):
        order.append(("kernels", item.provider))
        if item.provider == "reference":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        m = Measurement(item)
        m.add("kernel_time", 1e-4, "s")
        return m

    monkeypatch.setattr(runner, "measure", measure_one)
    monkeypatch.setattr(measure, "kernel_time", kernel_time)
    monkeypatch.setattr(runner.providers, "readiness", lambda *args: runner.providers.Readiness())
    items = _items(kind, ("triton", "reference", "dense"))
    bench = measure.Bench(torch.device("cuda"), Ceilings("cuda", 1e12, 1e14, "float16", None, "-", "-", "-"), 0.0)
    progress = []
    got = list(runner.run_matrix(items, bench, progress.append))

    assert order == [("time", item.provider) for item in items] + [("kernels", item.provider) for item in items]
    assert [(m.item.provider, m.value("kernel_time")) for m in got[len(items):]] == [
        (item.provider, 1e-4) for item in items if item.provider != "reference"]
    kernel = {m.item: m.value("kernel_time") for m in merge(got)}
    assert all((kernel[item] == 1e-4) == (item.provider != "reference") for item in items)
    failed = [line for line in progress if "reference" in line and "no kernel time (out of memory: OutOfMemoryError" in line]
    assert len(failed) == len(items) // 3, progress


@pytest.mark.parametrize("metric, a, b, verdict", [
    ("accuracy", 0.90, 0.72, "worse"),  # a 20% drop of a higher-is-better metric is a regression
    ("accuracy", 0.72, 0.90, "better"),
    ("pct_of_roofline", 50.0, 40.0, "worse"),
    ("energy_per_token", 1.0, 1.2, "worse"),  # lower is better
    ("time", 1.0, 1.2, "slower"),
])
def test_compare_judges_each_metric_by_its_direction(tmp_path, capsys, metric, a, b, verdict):
    rows = []
    for run_id, value in (("A", a), ("B", b)):
        run = results.Run(run_id, "t", "c", False, "m", "cpu", "{}")
        rows.append(run.row("accuracy:mqar", {"snapshot": "s"}, "triton", metric, value, "fraction"))
    results.append(rows, tmp_path)
    assert main(["compare", "A", "B", "--metric", metric, "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].split()[-1] == verdict, out
    assert ("higher is better" if metric in results.HIGHER_IS_BETTER else "lower is better") in out


def test_compare_calls_a_ratio_within_the_runs_spread_same(tmp_path, capsys):
    """Two runs of one code on a busy machine: B/A 0.4 lies outside either run's relative spread, but the
    runs' IQRs overlap, so the figures do not tell them apart."""
    params = {"direction": "forward", "seq": 64}
    rows = []
    for run_id, t, low, high in (("A", 1.0, 0.5, 1.0), ("B", 0.4, 0.4, 0.55), ("C", 0.4, 0.39, 0.41)):
        run = results.Run(run_id, "t", "c", False, "m", "cpu", "{}")
        rows.append(run.row("layer", params, "dense", "time", t, "s", spread_low=low, spread_high=high))
    results.append(rows, tmp_path)
    assert main(["compare", "A", "B", "--results-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[-1] == "same"
    assert main(["compare", "A", "C", "--results-dir", str(tmp_path)]) == 0  # apart: C's IQR ends below A's
    assert capsys.readouterr().out.splitlines()[-1].split()[-1] == "faster"
    below = results.Run("D", "t", "c", False, "m", "cpu", "{}")
    results.append([below.row("layer", params, "dense", "time", 0.1, "s", spread_low=0.09, spread_high=0.11,
                              flags=["time-below-floor"])], tmp_path)
    assert main(["compare", "A", "D", "--results-dir", str(tmp_path)]) == 0
    assert "faster (B IMPOSSIBLE: below the floor)" in capsys.readouterr().out


def test_run_summary_fits_120_columns_and_wide_shows_everything():
    import pandas as pd

    from mfbench.report.summaries import run_summary

    run = results.Run("R", "t", "c", False, "m", "cpu", "{}")
    params = {"direction": "forward", "seq": 64}
    why = "runs on cuda only (declared devices); " + "a long reason a plugin gives " * 4
    rows = [run.row("layer", params, "dense", "time", 1e-3, "s"),
            run.row("layer", params, "example_compiled", "skipped", float("nan"), "", flags=[why])]
    rows += [run.row(f"asv:layer.LayerForward.time_call", {"provider": p, "seq": s}, p, "asv_value", 1.0, "s")
             for p in ("dense", "triton") for s in (64, 128)]
    text = run_summary(pd.DataFrame(rows))
    assert max(map(len, text.splitlines())) <= 120, text
    assert "[1]" in text.splitlines()[2] and "\n[1] skipped: runs on cuda only" in text  # the reason, as a note
    assert "asv:" not in text and "and 4 asv values" in text
    wide = run_summary(pd.DataFrame(rows), wide=True)
    assert "skipped: " + why.strip() in wide and wide.count("asv:layer.LayerForward.time_call") == 4
