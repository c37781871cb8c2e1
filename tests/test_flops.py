import pytest
import torch

from mfbench.cost import flops
from mfbench.core.model import DenseBlock, MemoryFormerBlock, ModelConfig


def test_table1_agrees_with_print_except_the_flagged_row():
    table = flops.table1().set_index("model")
    assert list(table.index[~table["agrees_with_print"]]) == ["MemoryFormer-small"]
    assert table.loc["MemoryFormer-small", "flops_wo_attn"] == 6 * 96 * 2048 * 768  # 0.91G, printed 1.0G
    for model, row in table[table["agrees_with_print"]].iterrows():
        assert round(row.flops_total / 1e9, 1) == row.paper_flops_total / 1e9
    assert table.loc["Pythia-70M", "flops_total"] == 2 * 2048**2 * 512 + 12 * 2048 * 512**2


def test_nineteen_percent():
    s = d = 2048
    ratio = flops.memoryformer_block_paper(s, d, d // 8).flops() / flops.dense_block(s, d).flops()
    assert 0.19 < ratio < 0.20


def test_exact_count_itemises_lookups():
    cfg = ModelConfig.preset("base")
    s, d, k, tau = 2048, 1024, 128, 8
    exact = flops.memoryformer_block(s, cfg)
    assert exact.macs == 2 * s * s * d + s * (4 * k * d + (tau + 2) * k * k)
    assert exact.elementwise == s * 2 * (d + d + (tau + 2) * k)
    assert exact.flops("2mac") == 2 * exact.macs + exact.elementwise


@pytest.mark.parametrize("s", [16, 64])
def test_dense_block_two_per_mac_equals_flop_counter(s):
    cfg = ModelConfig.preset("micro")
    block = DenseBlock(cfg)
    x = torch.randn(1, s, cfg.d_model)
    assert flops.count_flops(lambda: block(x)) == flops.dense_block(s, cfg.d_model).flops("2mac")


def test_memoryformer_block_counted_matmuls_equal_its_multiply_adds():
    # FlopCounterMode sees the reference's row sums (bmm) and attention, not the hash or the weights.
    cfg = ModelConfig.preset("micro")
    x = torch.randn(1, 32, cfg.d_model)
    block = MemoryFormerBlock(cfg)
    assert flops.count_flops(lambda: block(x)) == 2 * flops.memoryformer_block(32, cfg).macs


def test_model_totals_and_conventions():
    cfg = ModelConfig.preset("tiny")
    mf, dense = flops.model("memoryformer", 2048, cfg), flops.model("dense", 2048, cfg)
    assert mf.flops() < dense.flops()
    assert dense.flops("2mac") == 2 * dense.flops("paper")
    with pytest.raises(ValueError, match="convention"):
        mf.flops("3mac")
    with pytest.raises(ValueError, match="architecture"):
        flops.model("rnn", 8, cfg)
