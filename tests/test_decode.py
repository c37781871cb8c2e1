"""Decoding: the generation step against the full forward, the decode preset's items through the one pipeline,
the bytes a step reads, the break-even verdict and its plot and findings."""

import json

import pandas as pd
import pytest
import torch

from mfbench.bench import cases
from mfbench.bench.cases import DECODE_LAYER, DECODE_MODEL, Case, Item
from mfbench.bench.measure import Bench
from mfbench.bench.measurement import to_rows
from mfbench.bench.runner import run_matrix
from mfbench.core.model import KVCache, ModelConfig, build
from mfbench.cost import flops
from mfbench.cost.traffic import decode_step_traffic, layer_traffic
from mfbench.instruments.ceilings import Ceilings
from mfbench.report import decode
from mfbench.store.results import Run

CFG = ModelConfig.preset("micro", n_layer=2, d_model=32, n_head=4, vocab_size=50)


@pytest.mark.parametrize("arch", ["memoryformer", "dense"])
def test_decode_steps_equal_the_full_forward_at_every_position(arch):
    model = build(arch, CFG).double().eval()
    idx = torch.randint(0, CFG.vocab_size, (3, 9))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.empty(CFG, 3, 10, dtype=torch.float64)
        steps = torch.cat([model.step(idx[:, i:i + 1], cache) for i in range(idx.shape[1])], 1)
    assert cache.length == 9
    torch.testing.assert_close(steps, full, rtol=1e-12, atol=1e-12)


def test_a_step_that_does_not_advance_is_the_same_step_again():
    model = build("memoryformer", CFG).double().eval()
    cache = KVCache.empty(CFG, 2, 5, dtype=torch.float64)
    idx = torch.randint(0, CFG.vocab_size, (2, 1))
    with torch.no_grad():
        for _ in range(3):
            model.step(idx, cache)
        a, b = model.step(idx, cache, advance=False), model.step(idx, cache, advance=False)
    assert cache.length == 3 and torch.equal(a, b)
    with pytest.raises(ValueError, match="one new token per sequence"):
        model.step(torch.zeros(2, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="2 sequences"):
        model.step(torch.zeros(3, 1, dtype=torch.long), cache)


def test_lookup_bytes_are_the_rows_the_tokens_pick_bounded_by_the_tables():
    d, e = 2048, 2
    k = d // 8
    for b in (1, 4, 8):
        assert layer_traffic(b, d, d, 8, e).hbm_bytes == b * k * d * e + 2 * b * d * e
        assert layer_traffic(b, d, d, 8, e, dense=True).hbm_bytes == d * d * e + 2 * b * d * e
    # B = tau: the lookup reads as many weight bytes as dense; at 2^tau tokens and above, the whole tables
    assert layer_traffic(8, d, d, 8, e).hbm_bytes == layer_traffic(8, d, d, 8, e, dense=True).hbm_bytes
    assert layer_traffic(1000, d, d, 8, e).hbm_bytes == k * 256 * d * e + 2 * 1000 * d * e


def test_a_decode_step_reads_each_layer_the_kv_cache_and_the_head():
    e, b, cache = 4, 2, 7
    dense = decode_step_traffic("dense", CFG, b, cache, e)
    d, v = CFG.d_model, CFG.vocab_size
    weights = (3 * d * d + d * d + 8 * d * d) * e
    acts = b * e * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    kv = 2 * b * (cache + 1) * d * e
    assert dense.hbm_bytes == CFG.n_layer * (weights + acts + kv) + b * d * e + (d * v * e + b * (d + v) * e)
    assert dense.flops == b * flops.model("dense", 1, CFG, past=cache).flops("2mac")
    assert flops.attention(1, d, past=cache).macs == 2 * (cache + 1) * d
    mf = decode_step_traffic("memoryformer", CFG, b, cache, e)
    assert 0 < mf.hbm_bytes < dense.hbm_bytes
    with pytest.raises(ValueError, match="architecture"):
        decode_step_traffic("moe", CFG, b, cache, e)


def test_the_decode_preset_plans_layers_and_steps_and_leaves_the_others_alone():
    preset = cases.PRESETS["decode"]
    items = cases.plan(preset, torch.device("cpu"), ["embedding_bag", "dense"], None, torch.float32)
    layers = [i for i in items if i.benchmark == DECODE_LAYER]
    steps = [i for i in items if i.benchmark == DECODE_MODEL]
    assert {(i.case.in_features, i.case.out_features) for i in layers} == {(1024, 1024), (2048, 2048), (4096, 4096), (512, 1536)}
    assert {i.seq for i in items} == {1, 2, 4, 8} and {i.cache for i in steps} == {512}
    only = cases.plan(preset, torch.device("cuda"), ["dense"], [1, 64], torch.float16, ["model"])
    assert {i.benchmark for i in only} == {DECODE_MODEL} and {i.cfg.name for i in only} == {"tiny", "small", "base"}
    assert {i.cache for i in only} == {512, 2048} and {i.seq for i in only} == {1, 64}
    assert json.loads(json.dumps(only[0].params()))["batch"] == 1
    default = cases.plan(cases.PRESETS["smoke"], torch.device("cpu"), ["dense"], None, torch.float32)
    assert {i.benchmark for i in default} <= set(cases.BENCHMARKS)


def test_decode_items_go_through_the_pipeline_with_their_bytes_and_parameter_bytes():
    case = Case("forward", 2, 16, 16)
    names = ("reference", "embedding_bag", "triton", "dense")  # triton under TRITON_INTERPRET (conftest)
    items = [Item.decode_layer(case, n, torch.float32) for n in names]
    items += [Item(DECODE_MODEL, "forward", 2, n, torch.float32, cfg=CFG, cache=5) for n in ("reference", "dense")]
    bench = Bench(torch.device("cpu"), Ceilings("cpu", 1e10, 1e10, "float32", None, "-", "-", "-"), 0.0)
    run = Run.start("cpu")
    rows = pd.DataFrame([r for m in run_matrix(items, bench, lambda _: None) for r in to_rows(m, run)])
    got = {(b, p, m): v for b, p, m, v in rows[["benchmark", "provider", "metric", "value"]].itertuples(index=False)}
    assert not (rows["metric"] == "failed").any(), rows[rows["metric"] == "failed"]
    for n in names:
        assert got[DECODE_LAYER, n, "time"] > 0
    assert got[DECODE_LAYER, "triton", "parameter_bytes"] == 32 * got[DECODE_LAYER, "dense", "parameter_bytes"]
    assert got[DECODE_LAYER, "dense", "parameter_bytes"] == 16 * 16 * 4
    assert got[DECODE_LAYER, "embedding_bag", "hbm_bytes_min"] == layer_traffic(2, 16, 16, 8, 4).hbm_bytes
    assert got[DECODE_MODEL, "dense", "hbm_bytes_min"] == decode_step_traffic("dense", CFG, 2, 5, 4).hbm_bytes
    assert got[DECODE_MODEL, "reference", "parameter_bytes"] > got[DECODE_MODEL, "dense", "parameter_bytes"] > 0
    params = json.loads(rows.loc[rows["benchmark"] == DECODE_MODEL, "params"].iloc[0])
    assert (params["batch"], params["cache"], params["tokens"]) == (2, 5, 2)


def test_the_asv_suite_item_of_a_decode_set():
    tiny = ModelConfig.preset("tiny")
    layer = cases.suite_item(DECODE_LAYER, "forward", 8, "dense", torch.float32, tiny)
    assert (layer.case.tokens, layer.case.in_features, layer.case.out_features) == (8, 512, 512)
    step = cases.suite_item(DECODE_MODEL, "forward", 8, "dense", torch.float32, tiny)
    assert (step.seq, step.cache) == (8, cases.SUITE_CACHE)
    assert cases.suite_item("model", "forward", 64, "dense", torch.float32, tiny).cache == 0


def _rows(times: dict, metric="graph_time", device="GPU-X", d=64, spread=0.05):
    """decode-layer rows: {(provider, B): seconds}, with an interquartile range of +-spread."""
    out = []
    for (provider, b), t in times.items():
        params = {"direction": "forward", "tokens": b, "in_features": d, "out_features": d, "tau": 8,
                  "weighting": "paper", "dtype": "float16"}
        base = dict(benchmark=DECODE_LAYER, device=device, params=json.dumps(params), provider=provider, unit="s",
                    flags="", time_utc="2026-01-01T00:00:00", run_id="r1", commit="abcdef0123",
                    fingerprint=json.dumps({"cpu": "Xeon"}))
        out.append({**base, "metric": metric, "value": t, "spread_low": t * (1 - spread), "spread_high": t * (1 + spread)})
        bytes_ = layer_traffic(b, d, d, 8, 2, dense=provider == "dense").hbm_bytes
        out.append({**base, "metric": "hbm_bytes_min", "value": bytes_, "unit": "B", "spread_low": None, "spread_high": None})
    return pd.DataFrame(out)


def _verdict(times, **kw):
    (v,) = decode.layer_verdicts(decode.decode_frame(_rows(times, **kw), kw.get("device", "GPU-X")))
    return v


def test_the_break_even_batch_is_where_the_lookup_stops_being_faster_by_its_spread():
    v = _verdict({("triton", 1): 1.0, ("dense", 1): 2.0, ("embedding_bag", 1): 3.0, ("triton", 2): 1.0,
                  ("dense", 2): 2.0, ("triton", 4): 1.95, ("dense", 4): 2.0, ("triton", 8): 4.0, ("dense", 8): 2.0})
    assert (v.break_even, v.word, v.figure) == (2, "break-even B = 2", "graph_time")
    assert "faster up to B = 2, tie at B = 4" in v.why and "0.5x dense's graph replay" in v.why
    ratio = layer_traffic(1, 64, 64, 8, 2).hbm_bytes / layer_traffic(1, 64, 64, 8, 2, dense=True).hbm_bytes
    assert f"reading {ratio:.2g}x its modelled bytes" in v.why and f"{ratio:.2g}" == "0.15"


def test_no_break_even_where_the_lookup_is_slower_or_tied_at_the_smallest_batch():
    v = _verdict({("triton", 1): 6.0, ("dense", 1): 1.0, ("triton", 8): 9.0, ("dense", 8): 1.0})
    assert (v.break_even, v.word) == (None, "none") and "slower than dense at the smallest batch" in v.why
    tie = _verdict({("triton", 1): 1.02, ("dense", 1): 1.0, ("triton", 8): 0.5, ("dense", 8): 1.0})
    assert tie.word == "none" and "tied with" in tie.why
    again = _verdict({("triton", 1): 1.0, ("dense", 1): 2.0, ("triton", 4): 2.0, ("dense", 4): 2.0,
                      ("triton", 8): 1.0, ("dense", 8): 2.0})
    assert again.word == "break-even B = 1" and "tie at B = 4, faster again at B = 8" in again.why
    ahead = _verdict({("triton", 1): 0.1, ("dense", 1): 1.0, ("triton", 8): 0.5, ("dense", 8): 1.0}, metric="time")
    assert (ahead.word, ahead.figure) == ("beyond B = 8", "time") and "every measured batch" in ahead.why


def test_findings_render_the_table_and_the_verdict(capsys):
    frame = _rows({("triton", 1): 1.0, ("dense", 1): 2.0, ("triton", 8): 4.0, ("dense", 8): 2.0})
    text = decode.decode_table(frame, "GPU-X")
    assert "| d=64 h=64 | 1 | triton 1e+03 | 2e+03 | 0.500 (faster) |" in text
    assert "**break-even B = 1**" in text and "no decode-model rows for device GPU-X" in text
    assert "(measured B = 1, 8;" in text  # two batches are not a range: the verdict names them
    cpu = _rows({("triton", 1): 1.0, ("dense", 1): 2.0}, device="cpu-2cores")
    assert set(decode.decode_frame(cpu, "cpu-2cores")["machine"]) == {"cpu-2cores (Xeon)"}
    cpu["flags"] = decode.BUSY
    assert f"| cpu-2cores (Xeon) ({decode.BUSY}: 4 of 4 rows), graph replay |" in decode.decode_table(cpu, "cpu-2cores")


def test_the_readme_shows_the_decode_rows_of_the_result_tables(committed):
    """As committed: rows a user has added to results/ since are theirs, not the documents'. The README
    carries the verdicts, results/decode.md the tables behind them."""
    from mfbench.store import results

    rows = results.load(committed / "results")
    block = lambda text: text.split("<!-- decode:begin -->\n")[1].split("<!-- decode:end -->")[0]  # noqa: E731
    cpu = lambda text: text.split("<!-- decode-cpu:begin -->\n")[1].split("<!-- decode-cpu:end -->")[0]  # noqa: E731
    readme, tables = (committed / "README.md").read_text(), (committed / "results" / "decode.md").read_text()
    assert block(readme) == decode.decode_verdicts(rows, "H200")
    assert cpu(readme) == decode.decode_verdicts(rows, "cpu-2cores")
    assert block(tables) == decode.decode_table(rows, "H200")
    assert cpu(tables) == decode.decode_table(rows, "cpu-2cores")


def test_the_decode_plot_marks_the_analytic_break_even(tmp_path):
    from mfbench.report.plots import decode as decode_plot

    frame = pd.concat([_rows({("triton", 1): 1.0, ("dense", 1): 2.0, ("triton", 8): 4.0, ("dense", 8): 2.0}),
                       _rows({("triton", 1): 1.5, ("dense", 1): 2.5}, metric="time")])
    paths = decode_plot(frame, tmp_path)
    assert [p.name for p in paths] == ["decode.png", "decode.svg"]
    svg = paths[1].read_text()
    assert "break-even B = 1 (graph_time)" in svg and "analytic break-even B = tau = 8" in svg
    empty = decode_plot(frame.iloc[0:0], tmp_path / "none")
    assert "no decode-layer rows yet" in empty[1].read_text()


def test_a_decode_row_says_the_command_that_measures_it_again():
    from mfbench.shells.cli.reading import repro_command

    params = Item(DECODE_MODEL, "forward", 8, "dense", torch.float16, cfg=CFG, cache=512).params()
    command, _ = repro_command(DECODE_MODEL, params, "triton", "H200")
    assert command == ("mfbench run --preset decode --device cuda --providers triton --seq 8 --benchmarks model "
                       "--dtype float16 --weighting paper")


@pytest.mark.gpu
def test_decode_items_are_replayed_from_a_cuda_graph_on_the_gpu():
    """Every GPU decode row's figure is the graph replay: a step must capture (its cache write included), and
    its replay must agree with the eager step."""
    dev = torch.device("cuda")
    items = [Item.decode_layer(Case("forward", b, 2048, 2048), n, torch.float16) for b in (1, 8) for n in ("triton", "dense")]
    items += [Item(DECODE_MODEL, "forward", 4, n, torch.float16, cfg=ModelConfig.preset("tiny"), cache=512)
              for n in ("triton", "dense")]
    bench = Bench(dev, Ceilings("cuda", 1e12, 1e14, "float16", None, "-", "-", "-"), 0.0)
    run = Run.start("cuda")
    rows = pd.DataFrame([r for m in run_matrix(items, bench, lambda _: None) for r in to_rows(m, run)])
    graph = rows[rows["metric"] == "graph_time"]
    assert len(graph) == len(items) and (graph["value"] > 0).all(), rows[rows["metric"].isin(["graph_time", "failed"])]
    from mfbench.bench.subject import build

    from mfbench.core.lookup import input_checks

    subject = build(items[-2], dev)
    # The token-id range check reads the ids on the host, which no capture allows; the measurement turns it
    # off the same way (the rows above were captured).
    with torch.no_grad(), input_checks(False):
        eager = subject.forward(subject.x)
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            subject.forward(subject.x)  # warm-up on the capture stream
            with torch.cuda.graph(g, stream=stream):
                out = subject.forward(subject.x)
        torch.cuda.current_stream().wait_stream(stream)
        g.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(out, eager)
