import pytest
import torch

from mfbench.core import builtins, providers, registry
from mfbench.core.lookup import reference_lookup
from mfbench.core.model import MemoryLayer


def test_registry_lists_the_required_providers():
    assert {"reference", "embedding_bag", "compiled", "triton", "dense"} <= set(providers.names())
    assert "dense" not in providers.names(exact_only=True)
    with pytest.raises(ValueError, match="unknown provider 'x'.*reference"):
        providers.get("x")
    with pytest.raises(ValueError, match="registered twice"):
        providers.register(providers.get("reference"))


@pytest.mark.parametrize("name", ["reference", "embedding_bag", "triton"])
@pytest.mark.parametrize("weighting", ["paper", "released"])
def test_exact_providers_match_reference_with_gradients(name, weighting):
    assert providers.unavailable(name) is None
    layer = MemoryLayer(24, 10, tau=8, weighting=weighting, provider=name).double()
    x = torch.randn(13, 24, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(13, 10, dtype=torch.float64)
    got = torch.autograd.grad(layer(x), (x, layer.tables, layer.bias), gy)
    ref_y = reference_lookup(x, layer.tables, layer.spec) + layer.bias
    want = torch.autograd.grad(ref_y, (x, layer.tables, layer.bias), gy)
    for a, b in zip(got, want):  # float64 in, float64 computed: the Triton kernels too
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_compiled_provider_matches_reference():
    reason = providers.unavailable("compiled")
    if reason:
        pytest.fail(f"torch.compile should work on this CPU: {reason}")
    layer = MemoryLayer(16, 12, tau=8, provider="compiled")
    x = torch.randn(9, 16, requires_grad=True)
    y = layer(x)
    gx, gt = torch.autograd.grad(y.sum(), (x, layer.tables))
    ref = reference_lookup(x, layer.tables, layer.spec) + layer.bias
    rgx, rgt = torch.autograd.grad(ref.sum(), (x, layer.tables))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(gx, rgx)
    torch.testing.assert_close(gt, rgt)


@pytest.mark.slow
def test_compiled_raises_dynamos_recompile_limit_and_a_fallback_is_noticed(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(builtins.RecompileLimitWatch, "hit", False)
    builtins.compiled_block()
    assert torch._dynamo.config.recompile_limit >= builtins.COMPILED_RECOMPILE_LIMIT
    torch._dynamo.reset()
    try:
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
            MemoryLayer(16, 12, tau=8, provider="compiled")(torch.randn(9, 16))
            assert not builtins.compiled_fell_back()
            # new table shapes: over a limit of one, dynamo runs the lookup eagerly and warns once
            MemoryLayer(16, 20, tau=8, provider="compiled")(torch.randn(9, 16))
            MemoryLayer(24, 12, tau=8, provider="compiled")(torch.randn(9, 24))
        assert builtins.compiled_fell_back()
    finally:
        torch._dynamo.reset()  # later tests compile afresh, under the raised limit


def test_dense_provider_is_the_replaced_linear():
    layer = MemoryLayer(16, 12, provider="dense")
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), x @ layer.dense.weight.T + layer.bias)
    assert layer.dense.weight.shape == (12, 16)
    assert any(p is layer.dense.weight for p in layer.parameters())


def test_unavailable_says_why_instead_of_crashing(monkeypatch):
    assert "CUDA" in (providers.unavailable("reference", "cuda") or "CUDA") or torch.cuda.is_available()
    bad = providers.Provider("broken", "always fails", lambda layer, x: 1 / 0)
    monkeypatch.setitem(registry._REGISTRY, "broken", bad)
    providers.unavailable.cache_clear()
    assert providers.unavailable("broken").startswith("ZeroDivisionError")
    providers.unavailable.cache_clear()


def test_triton_reason_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = providers.get("triton").requirement(torch.device("cpu"), torch.float32)
    assert "TRITON_INTERPRET" in reason
