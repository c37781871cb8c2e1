import pytest
import torch

from mfbench.core.model import (PRESETS, DenseTransformerLM, MemoryBlock, MemoryFormerBlock, MemoryFormerLM, MemoryLayer,
                           ModelConfig, build)


def test_memory_layer_shapes_and_parameters():
    layer = MemoryLayer(64, 40, tau=8)
    assert layer.tables.shape == (8, 256, 40) and layer.bias.shape == (40,)
    assert layer(torch.randn(2, 3, 64)).shape == (2, 3, 40)
    assert MemoryLayer(64, 40, bias=False).bias is None


def test_bias_is_added():
    layer = MemoryLayer(16, 4, tau=8)
    with torch.no_grad():
        layer.bias.fill_(3.0)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x) - 3.0, MemoryLayer.forward(layer, x) - layer.bias)


def test_provider_is_settable_and_validated():
    layer = MemoryLayer(16, 8)
    layer.provider = "embedding_bag"
    assert layer.provider == "embedding_bag"
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        layer.provider = "nope"
    with pytest.raises(ValueError, match="unknown provider"):
        MemoryLayer(16, 8, provider="nope")


@pytest.mark.parametrize("make,error,match", [
    (lambda: MemoryLayer(20, 8, tau=8), ValueError, "not divisible by tau"),
    (lambda: MemoryLayer(16, 8, weighting="other"), ValueError, "unknown weighting"),
    (lambda: MemoryLayer(0, 8), ValueError, "in_features"),
])
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("x,error,match", [
    (torch.randn(3, 15), ValueError, "last dimension"),
    (torch.full((2, 16), float("nan")), ValueError, "NaN or Inf"),
    (torch.tensor([[float("inf")] + [0.0] * 15]), ValueError, "NaN or Inf"),
    (torch.randn(0, 16), ValueError, "empty"),
    (torch.ones(2, 16, dtype=torch.int64), TypeError, "floating-point"),
    (torch.randn(2, 16, dtype=torch.float64), TypeError, "dtype"),
    ([[0.0] * 16], TypeError, "torch.Tensor"),
])
def test_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        MemoryLayer(16, 8)(x)


def test_presets_follow_the_paper():
    for name, (layers, d, k) in {"tiny": (6, 512, 64), "small": (12, 768, 96), "base": (24, 1024, 128)}.items():
        cfg = ModelConfig.preset(name)
        assert (cfg.n_layer, cfg.d_model, cfg.num_chunks, cfg.tau) == (layers, d, k, 8)
    assert set(PRESETS) == {"micro", "tiny", "small", "base"}
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown config field"):
        ModelConfig.preset("micro", depth=3)
    with pytest.raises(ValueError, match="n_head"):
        ModelConfig.preset("micro", n_head=3)


def test_memory_block_structure():
    cfg = ModelConfig.preset("micro")
    block = MemoryBlock(cfg)
    k, tau = cfg.num_chunks, cfg.tau
    assert block.layer1.tables.shape == (k, 2**tau, (tau + 2) * k)
    assert block.layer2.tables.shape == (k, 2 ** (tau + 2), cfg.d_model)  # tau+2-bit chunks, 4x the rows
    assert not any(isinstance(m, (torch.nn.GELU, torch.nn.ReLU)) for m in block.modules())


def test_block_has_no_output_projection_and_shares_qkv_hash():
    cfg = ModelConfig.preset("micro")
    block = MemoryFormerBlock(cfg)
    assert block.qkv.tables.shape == (cfg.num_chunks, 256, 3 * cfg.d_model)  # one hash, three tables side by side
    assert not any(isinstance(m, torch.nn.Linear) for m in block.modules())
    x = torch.randn(2, 16, cfg.d_model)
    assert block(x).shape == x.shape


def test_qkv_equals_three_layers_with_one_hash():
    cfg = ModelConfig.preset("micro")
    fused = MemoryLayer(64, 192, bias=False)
    x = torch.randn(9, 64)
    y = fused(x)
    for i in range(3):
        single = MemoryLayer(64, 64, bias=False)
        with torch.no_grad():
            single.tables.copy_(fused.tables[..., i * 64:(i + 1) * 64])
        torch.testing.assert_close(single(x), y[:, i * 64:(i + 1) * 64])
    assert cfg.num_chunks == 8


@pytest.mark.parametrize("name", ["tiny"])
def test_tiny_lms_forward_on_cpu(name):
    cfg = ModelConfig.preset(name)
    idx = torch.randint(0, cfg.vocab_size, (2, 128))
    for model in (MemoryFormerLM(cfg), DenseTransformerLM(cfg)):
        with torch.no_grad():
            logits = model(idx)
        assert logits.shape == (2, 128, cfg.vocab_size)
        assert torch.isfinite(logits).all()


def test_lm_is_causal():
    cfg = ModelConfig.preset("micro")
    model = MemoryFormerLM(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, 20))
    changed = idx.clone()
    changed[0, 15] = (changed[0, 15] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[0, :15], b[0, :15])
    assert not torch.allclose(a[0, 15:], b[0, 15:])


def test_lm_trains_a_step():
    cfg = ModelConfig.preset("micro")
    model = MemoryFormerLM(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 32))
    loss = torch.nn.functional.cross_entropy(model(idx)[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("idx,error,match", [
    (torch.randint(0, 10, (2, 4)).float(), TypeError, "int32 or int64"),
    (torch.randint(0, 10, (8,)), ValueError, "shape"),
    (torch.full((1, 4), 999), ValueError, r"\[0, 256\)"),
    (torch.full((1, 4), -1), ValueError, r"\[0, 256\)"),
])
def test_lm_bad_tokens(idx, error, match):
    with pytest.raises(error, match=match):
        MemoryFormerLM(ModelConfig.preset("micro"))(idx)


def test_benchmarks_switch_off_the_token_range_scan(monkeypatch):
    # the scan reads token values, a device sync inside every timed call of a model on a GPU
    from mfbench.core.lookup import input_checks

    model, idx = MemoryFormerLM(ModelConfig.preset("micro")), torch.randint(0, 256, (1, 8))
    read = []
    monkeypatch.setattr(torch.Tensor, "max", lambda self, *a, **k: read.append(1) or torch.amax(self, *a, **k))
    model(idx)
    assert read
    read.clear()
    with input_checks(False):
        model(idx)
    assert not read


def test_set_provider_and_build():
    cfg = ModelConfig.preset("micro")
    model = build("memoryformer", cfg)
    model.set_provider("embedding_bag")
    assert {layer.provider for layer in model.memory_layers()} == {"embedding_bag"}
    assert isinstance(build("dense", cfg), DenseTransformerLM)
    with pytest.raises(ValueError, match="architecture"):
        build("rnn", cfg)
