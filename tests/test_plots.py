"""The plots draw from the result tables alone, and say so when there is nothing to draw."""

import json

import pandas as pd

from mfbench.report import crossover, plots, style
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


def _patch(monkeypatch, name, fn):
    """The plot modules call style's helpers by the names they imported: swap it in each."""
    for module in (plots, crossover, style):
        monkeypatch.setattr(module, name, fn)


def test_all_plots_written(tmp_path, monkeypatch):
    placeholders = []
    empty = style.empty_plot
    _patch(monkeypatch, "empty_plot", lambda out, name, message: placeholders.append(name) or empty(out, name, message))
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
    assert crossover._crossover_text(frame) == "crossover: MemoryFormer (triton) faster from 1024 tokens"
    only_short = frame.assign(time=[2.0, 1.0, 1.0, 2.0])  # faster at 128, slower at 1024: no crossover
    assert crossover._crossover_text(only_short) == "no clean crossover: MemoryFormer (triton) faster at 128 tokens only"
    slower = frame.assign(time=[1.0, 2.0, 1.0, 2.0])
    assert crossover._crossover_text(slower) == "no crossover up to 1024 tokens: dense is faster everywhere"
    bound = frame.assign(host_bound=[True, True, False, False])
    assert crossover._crossover_text(bound).endswith("(ringed: 2 of 4 times are host-bound)")
    # on a GPU the kernels' own time gets its verdict too: here launches hide a crossover the kernels have
    kernels = frame.assign(time=[1.0, 2.0, 1.0, 2.0], kernel_time=[0.5, 0.6, 1.0, 0.4])
    assert crossover._crossover_text(kernels) == ("no crossover up to 1024 tokens: dense is faster everywhere\n"
                                             "kernels alone (dashed): crossover: MemoryFormer (triton) faster from 1024 tokens")
    # host-bound eager medians that disagree with the graph replays say which verdict is the device's
    replays = bound.assign(time=[2.0, 1.0, 2.0, 1.0], graph_time=[1.0, 2.0, 1.0, 2.0])
    lines = crossover._crossover_text(replays).splitlines()
    assert lines[0].startswith("MemoryFormer (triton) faster at every") and lines[-2].startswith("graph replays (dotted): no crossover")
    assert lines[-1] == "(the eager verdict differs: host-bound times, the graph replays show the device's)"
    agree = replays.assign(graph_time=[2.0, 1.0, 2.0, 1.0])
    assert "differs" not in crossover._crossover_text(agree)
    # one measured length is no range, and the verdict names the provider that beats dense, not all of them
    one = pd.DataFrame({"provider": ["dense", "embedding_bag", "reference"], "seq": [128] * 3, "time": [2.0, 1.0, 3.0]})
    assert crossover._crossover_text(one) == "MemoryFormer (embedding_bag) faster at the one measured length (128 tokens)"
    assert crossover._crossover_text(one.assign(time=[0.5, 1.0, 3.0])) == "dense faster at the one measured length (128 tokens)"


def test_host_bound_times_are_carried_from_their_flags():
    run = results.Run.start("cpu")
    rows = _rows(run, [("layer", "forward", 128, "dense", 1e-3, 1e-6), ("layer", "forward", 1024, "dense", 2e-3, 1e-6)])
    rows[0]["flags"] = "host-bound"  # the first row is the s=128 time
    wide = style.to_wide(style.expand(pd.DataFrame(rows)))
    assert dict(zip(wide["seq"], wide["host_bound"])) == {128: True, 1024: False}


def test_empty_tables_give_labelled_placeholders(tmp_path):
    paths = plots.draw_all(tmp_path / "none", tmp_path / "plots")
    assert len(paths) == 18 and all(p.exists() for p in paths)  # budget.png: no budget rows yet


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


# --- plots a newcomer can read: one colour per provider, legends off the data, dtype and shape in every
# title, no empty panel ----------------------------------------------------------------------------------


def _device_rows(device, cases, dtype="float32", d=64, energy=True):
    """Runner rows of one device: (benchmark, seq, provider, time) each, forward, with energy unless a
    device does not measure it (a CPU)."""
    run = results.Run.start("cpu")
    out = []
    for bench, seq, provider, t in cases:
        params = {"preset": "micro", "d": d, "tau": 8, "weighting": "paper", "seq": seq, "batch": 1,
                  "direction": "forward", "dtype": dtype}
        out.append(run.row(bench, params, provider, "time", t, "s"))
        out.append(run.row(bench, params, provider, "flops_analytic", 1e6 * seq, "FLOP"))
        out.append(run.row(bench, params, provider, "arithmetic_intensity", 2.0, "FLOP/B"))
        out.append(run.row(bench, params, provider, "flops_per_s", 1e6 * seq / t, "FLOP/s"))
        if energy:
            out.append(run.row(bench, params, provider, "energy_per_token", t / seq, "J/token"))
    return [{**row, "device": device} for row in out]


_SAVE, _EMPTY = style.save, style.empty_plot


def _figures(monkeypatch):
    """Collect every figure the plots save, drawn as saved, keyed by file name."""
    drawn = {}

    def card(out, name, message):  # a "nothing to draw yet" card is a message, not a panel: not checked
        paths = _EMPTY(out, name, message)
        drawn.pop(name)
        return paths

    _patch(monkeypatch, "empty_plot", card)

    def keep(fig, out, name):
        paths = _SAVE(fig, out, name)
        drawn[name] = fig
        return paths

    _patch(monkeypatch, "save", keep)
    return drawn


def _draw(tmp_path, name, rows, monkeypatch):
    results.append(rows, tmp_path / name)
    figures = _figures(monkeypatch)
    plots.draw_all(tmp_path / name, tmp_path / f"{name}-plots")
    return figures


def _legend_colours(fig):
    """{label: colour} of every legend entry of a figure (its own legends and its axes')."""
    from matplotlib.colors import to_hex

    colours = {}
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is None:
            continue
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()[0]
            colours[text.get_text()] = to_hex(colour)
    return colours


def _cases(providers, seqs=(128, 1024), benches=("layer", "block")):
    return [(b, s, p, 1e-3 * (i + 1) * s / 128) for b in benches for s in seqs for i, p in enumerate(providers)]


def test_a_provider_keeps_its_colour_in_every_figure_whatever_else_is_drawn(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    # two tables with different providers on different devices: seaborn's own palette would give
    # triton the second colour in one and the first in the other
    one = _draw(tmp_path, "one", _device_rows("cpu-a", _cases(["reference", "triton", "dense"])), monkeypatch)
    two = _draw(tmp_path, "two", _device_rows("H100-x", _cases(["triton", "dense"]), dtype="float16"), monkeypatch)
    seen = {}
    for name in ("regression", "roofline", "crossover", "flops_vs_time"):
        for figures in (one, two):
            for provider, colour in _legend_colours(figures[name]).items():
                if provider in ("reference", "triton", "dense"):
                    seen.setdefault(provider, set()).add(colour)
    assert seen == {p: {to_hex(style.provider_colour(p))} for p in ("reference", "triton", "dense")}
    assert len({c for cs in seen.values() for c in cs}) == 3  # and three providers, three colours
    # a provider the registry does not know keeps its colour too, whatever figure it is in
    assert style.provider_colour("someone_elses_kernel") == style.provider_colour("someone_elses_kernel")
    assert style.provider_order(["dense", "zzz", "triton", "reference"]) == ["reference", "triton", "dense", "zzz"]


def test_legends_cover_no_panel_titles_state_dtype_and_shape_and_no_panel_is_empty(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = (_device_rows("cpu-a", _cases(["reference", "embedding_bag", "dense"]), energy=False)
            + _device_rows("H100-x", _cases(["reference", "triton", "dense"], benches=("layer", "block", "model")),
                           dtype="float16", d=512))
    figures = _draw(tmp_path, "two-devices", rows, monkeypatch)
    assert {"regression", "roofline", "crossover", "flops_vs_time"} <= set(figures)
    for name, fig in figures.items():
        canvas = FigureCanvasAgg(fig)  # saved figures are closed: drawn again, as saved, to measure them
        canvas.draw()
        renderer = canvas.get_renderer()
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        for legend in filter(None, legends):
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(panel) for panel in panels), f"{name}: a legend covers a panel"
        for ax in fig.axes:
            title = ax.get_title()
            assert ("float32" in title or "float16" in title) and "d=" in title, f"{name}: {title!r}"
            has_data = any(len(line.get_xdata()) for line in ax.get_lines()) or any(
                len(c.get_offsets()) for c in ax.collections)
            assert has_data, f"{name}: panel {title!r} is empty"
    # the crossover: the CPU measured no energy, so its energy panels are left out: 2 + 0 for the CPU's
    # layer and block, 3 + 3 for the GPU's three benchmarks
    assert len(figures["crossover"].axes) == 2 + 6
    titles = [ax.get_title() for ax in figures["crossover"].axes]
    assert "layer forward, d=64, float32, cpu-a" in titles and "model forward, d=512, float16, H100-x" in titles


def test_the_crossover_draws_the_lookups_floor_and_says_where_it_lies_against_dense():
    rows = pd.DataFrame([{"benchmark": "layer", "device": "GPU-X", "metric": "time", "provider": "triton",
                          "params": json.dumps({"batch": 1, "d": 512, "direction": "forward", "dtype": "float16",
                                                "seq": seq, "tau": 8}), "time_utc": "t", "value": 1.0}
                         for seq in (2048, 8192)])
    ceilings = pd.DataFrame([{"benchmark": "ceiling", "device": "GPU-X", "metric": m, "value": v, "time_utc": "t"}
                             for m, v in (("copy_bandwidth", 4e12), ("matmul_rate", 7e14), ("onchip_bandwidth", 3e13))])
    rows["direction"] = "forward"
    floors = crossover.layer_floors(rows, pd.concat([rows, ceilings]))
    assert list(floors["seq"]) == [2048, 8192]
    # 2048 tokens x 64 rows x 512 wide x 2 bytes through the on-chip gather at 3e13 B/s
    assert floors["floor"].iloc[0] == max(134217728 / 3e13, (64 * 256 * 512 + 2048 * 512 * 2) * 2 / 4e12)
    part = pd.DataFrame({"seq": [2048, 8192, 2048, 8192], "provider": ["dense", "dense", "triton", "triton"],
                         "time": [1e-5, 1e-5, 1e-4, 1e-4], "kernel_time": [1e-6, 1e-4, 5e-5, 5e-4]})
    assert crossover._floor_verdict(part, floors) == "floor (dash-dot) above dense's kernel time at 2048 tokens"
    assert crossover._floor_verdict(part, floors.iloc[0:0]) is None


def test_the_roofline_places_profiled_cases_by_their_measured_bytes():
    def row(provider, metric, value):
        params = {"direction": "forward", "tokens": 2048, "in_features": 512, "out_features": 512, "tau": 8,
                  "weighting": "paper", "dtype": "float16", "target_ms": 1.0}
        return {"benchmark": "layer-kernel", "device": "GPU-X", "params": json.dumps(params), "provider": provider,
                "metric": metric, "value": value, "time_utc": "t"}
    rows = pd.DataFrame([row("triton", "measured_dram_bytes", 2e7), row("triton", "kernel_time", 3e-5),
                         row("dense", "kernel_time", 4e-6)])  # dense was not profiled: no point
    points = plots.measured_points(rows, "GPU-X")
    from mfbench.cost import flops

    ops = flops.memory_layer(2048, 512, 512, 8).flops("2mac")  # the analytic count, not the bytes model
    assert list(points["provider"]) == ["triton"]
    assert points["intensity"].iloc[0] == ops / 2e7 and points["flops_per_s"].iloc[0] == ops / 3e-5
