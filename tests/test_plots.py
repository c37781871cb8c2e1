"""The plots draw from the result tables alone, and say so when there is nothing to draw."""

import pandas as pd

from mfbench.report import plots
from mfbench.store import results


def _rows(run, device_rows):
    out = []
    for bench, direction, seq, provider, t, joules in device_rows:
        params = {"preset": "micro", "d": 64, "tau": 8, "weighting": "paper", "seq": seq, "batch": 1,
                  "direction": direction, "dtype": "float32"}
        out.append(run.row(bench, params, provider, "time", t, "s", spread_low=t * 0.9, spread_high=t * 1.1))
        out.append(run.row(bench, params, provider, "flops_analytic", 1e6 * seq, "FLOP"))
        out.append(run.row(bench, params, provider, "energy_per_token", joules, "J/token"))
        if bench == "layer":
            out.append(run.row(bench, params, provider, "kernel_time", t / 2, "s"))
            out.append(run.row(bench, params, provider, "arithmetic_intensity", 2.0, "FLOP/B"))
            out.append(run.row(bench, params, provider, "flops_per_s", 1e6 * seq / t, "FLOP/s"))
    return out


def test_all_plots_written(tmp_path, monkeypatch):
    placeholders = []
    empty = plots._empty
    monkeypatch.setattr(plots, "_empty", lambda out, name, message: placeholders.append(name) or empty(out, name, message))
    run = results.Run.start("cpu")
    rows = _rows(run, [
        ("layer", "forward", 128, "reference", 2e-3, 1e-6), ("layer", "forward", 128, "dense", 1e-3, 5e-7),
        ("layer", "forward", 1024, "reference", 4e-3, 1e-6), ("layer", "forward", 1024, "dense", 8e-3, 5e-7),
        ("block", "forward", 128, "triton", 3e-3, float("nan")), ("block", "forward", 128, "dense", 1e-3, float("nan")),
    ])
    rows.append(run.row("ceiling", {"measured_utc": "x", "matmul_dtype": "float32"}, "-", "copy_bandwidth", 1e10, "B/s"))
    results.append(rows, tmp_path / "tables")
    paths = plots.draw_all(tmp_path / "tables", tmp_path / "plots")
    names = {p.name for p in paths}
    for kind in ("regression", "regression_kernel", "roofline", "crossover", "flops_vs_time"):
        assert {f"{kind}.png", f"{kind}.svg"} <= names
        assert kind not in placeholders  # drawn from the rows, not a "nothing yet" card
    assert all(p.stat().st_size > 1000 for p in paths)
    # two runs at one commit: the regression plot aggregates them, and a redraw must not change a byte
    again = results.Run.start("cpu")
    results.append(_rows(again, [("layer", "forward", 128, "reference", 2.5e-3, 1e-6),
                                 ("layer", "forward", 128, "dense", 1.2e-3, 5e-7)]), tmp_path / "tables")
    first = {p.name: p.read_bytes() for p in plots.draw_all(tmp_path / "tables", tmp_path / "plots")}
    second = {p.name: p.read_bytes() for p in plots.draw_all(tmp_path / "tables", tmp_path / "plots")}
    assert first.keys() == second.keys() and [n for n in first if first[n] != second[n]] == []
    assert b"<dc:date>" not in first["regression.svg"]


def test_crossover_text():
    frame = pd.DataFrame({"provider": ["dense", "triton", "dense", "triton"], "seq": [128, 128, 1024, 1024],
                          "time": [1.0, 2.0, 3.0, 2.5]})
    assert plots._crossover_text(frame) == "crossover: MemoryFormer faster from 1024 tokens"
    only_short = frame.assign(time=[2.0, 1.0, 1.0, 2.0])  # faster at 128, slower at 1024: no crossover
    assert plots._crossover_text(only_short) == "no clean crossover: MemoryFormer faster at 128 tokens only"
    slower = frame.assign(time=[1.0, 2.0, 1.0, 2.0])
    assert plots._crossover_text(slower) == "no crossover up to 1024 tokens: dense is faster everywhere"
    bound = frame.assign(host_bound=[True, True, False, False])
    assert plots._crossover_text(bound).endswith("(ringed: 2 of 4 times are host-bound)")
    # on a GPU the kernels' own time gets its verdict too: here launches hide a crossover the kernels have
    kernels = frame.assign(time=[1.0, 2.0, 1.0, 2.0], kernel_time=[0.5, 0.6, 1.0, 0.4])
    assert plots._crossover_text(kernels) == ("no crossover up to 1024 tokens: dense is faster everywhere\n"
                                             "kernels alone (dashed): crossover: MemoryFormer faster from 1024 tokens")


def test_host_bound_times_are_carried_from_their_flags():
    run = results.Run.start("cpu")
    rows = _rows(run, [("layer", "forward", 128, "dense", 1e-3, 1e-6), ("layer", "forward", 1024, "dense", 2e-3, 1e-6)])
    rows[0]["flags"] = "host-bound"  # the first row is the s=128 time
    wide = plots._wide(plots._expand(pd.DataFrame(rows)))
    assert dict(zip(wide["seq"], wide["host_bound"])) == {128: True, 1024: False}


def test_empty_tables_give_labelled_placeholders(tmp_path):
    paths = plots.draw_all(tmp_path / "none", tmp_path / "plots")
    assert len(paths) == 14 and all(p.exists() for p in paths)


def test_accuracy_and_training_plots(tmp_path):
    import torch

    from mfbench.store import snapshots
    from mfbench.core.model import MemoryFormerLM, ModelConfig
    from mfbench.tasks.synthetic import MQAR

    cfg = ModelConfig.preset("micro", vocab_size=MQAR().vocab_size)
    torch.manual_seed(0)
    curve = [{"step": s, "loss": 3.0 / s, "seconds_per_step": 0.01} for s in (100, 200)]
    snap = snapshots.save(MemoryFormerLM(cfg), "memoryformer", cfg, MQAR(),
                          {"eval": {"sequences": 8, "seed": 7, "chance": 0.125}, "curve": curve, "lr": 9e-3},
                          tmp_path / "tables" / "snapshots")
    run = results.Run.start("cpu")
    measured = [snapshots.ProviderAccuracy("reference", 0.5, 4, 8, 1.0), snapshots.ProviderAccuracy("triton", 0.5, 4, 8, 1.0)]
    results.append(snapshots.rows(snap, measured, run), tmp_path / "tables")
    paths = plots.draw_all(tmp_path / "tables", tmp_path / "plots")
    sizes = {p.name: p.stat().st_size for p in paths}
    empty = {p.name: p.stat().st_size for p in plots.draw_all(tmp_path / "none", tmp_path / "empty")}
    for name in ("accuracy.png", "training.png"):  # drawn, not the placeholder
        assert sizes[name] > 2 * empty[name]
