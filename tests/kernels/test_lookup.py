"""The Triton kernels against a float64 reference, on CPU tensors through TRITON_INTERPRET=1 (see conftest),
and at the benchmark shapes on a GPU (tests marked gpu)."""

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfbench.kernels import lookup as kernels
from mfbench.kernels import lookup_grad as grad
from mfbench.bench.cases import CASES
from mfbench.bench.subject import make_layer, random_input
from mfbench.core.providers import TOLERANCE, relative_error, relative_errors
from mfbench.core.lookup import LookupSpec, bucket_weight, reference_lookup, sign_hash, split_chunks

interpreted = pytest.mark.skipif(not kernels.INTERPRETING, reason="runs under TRITON_INTERPRET=1")


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the kernels allocate starts as NaN (or -1 for integers), so an unwritten element shows."""
    def empty(shape, like, dtype=None):
        dtype = dtype or like.dtype
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(tuple(shape), fill, device=like.device, dtype=dtype)
    monkeypatch.setattr(kernels, "new_buffer", empty)


@st.composite
def problems(draw):
    tau = draw(st.sampled_from([4, 6, 8, 10]))
    k = draw(st.integers(1, 1 if tau == 10 else 3))
    return dict(tau=tau, k=k, tokens=draw(st.integers(1, 45)), out=draw(st.integers(1, 70)),
                weighting=draw(st.sampled_from(["paper", "released"])),
                temperature=draw(st.sampled_from([1.0, 0.5])),
                dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
                strategy=draw(st.sampled_from(grad.BACKWARD_STRATEGIES)),  # the draw's dtypes all take both
                kernel=draw(st.sampled_from(kernels.FORWARD_KERNELS)),
                seed=draw(st.integers(0, 2**16)))


@interpreted
@given(problems())
def test_forward_and_gradients_against_float64(poisoned, p):
    temperature = 1.0 if p["weighting"] == "released" else p["temperature"]
    spec = LookupSpec(p["tau"], p["weighting"], temperature)
    g = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(p["tokens"], p["k"] * p["tau"], generator=g).to(p["dtype"])
    tables = torch.randn(p["k"], 2 ** p["tau"], p["out"], generator=g).to(p["dtype"])
    gy = torch.randn(p["tokens"], p["out"], generator=g).to(p["dtype"])
    y = kernels.lookup_forward(x, tables, spec, kernel=p["kernel"])
    gx, gt = grad.lookup_backward(x, tables, gy, spec, strategy=p["strategy"])
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gt).all()
    assert y.dtype == gx.dtype == gt.dtype == p["dtype"]

    x64 = x.double().requires_grad_()
    t64 = tables.double().requires_grad_()
    ref = reference_lookup(x64, t64, spec)
    rgx, rgt = torch.autograd.grad(ref, (x64, t64), gy.double())
    # The same sums over |tables| and |dL/dy|: the scale of their rounding errors. Errors are measured
    # against it, not against the result: a sum that cancels (one token's dL/dy . T near 0; seen at
    # tau=10, one token) is small, its float32 rounding error is not.
    xa, ta = x64.detach().requires_grad_(), t64.detach().abs().requires_grad_()
    mag = reference_lookup(xa, ta, spec)
    mgx, mgt = torch.autograd.grad(mag, (xa, ta), gy.double().abs())

    def error(got, want, scale):  # ||got - want|| / ||scale||, inf where got is not finite
        return relative_error(got, want) * float(want.detach().norm() / scale.detach().norm())

    tol = TOLERANCE[p["dtype"]] * 4
    assert error(y, ref, mag) <= tol
    assert error(gx, rgx, mgx) <= tol * 2  # one more rounding: dL/dy . T summed before scaling
    assert error(gt, rgt, mgt) <= tol


@interpreted
@pytest.mark.parametrize("strategy", grad.BACKWARD_STRATEGIES)
def test_only_one_gradient_when_only_one_is_needed(poisoned, strategy):
    spec = LookupSpec(8)
    x, tables, gy = torch.randn(20, 16), torch.randn(2, 256, 8), torch.randn(20, 8)
    both = grad.lookup_backward(x, tables, gy, spec, strategy=strategy)
    gx, gt = grad.lookup_backward(x, tables, gy, spec, need_x=True, need_tables=False, strategy=strategy)
    assert gt is None and torch.isfinite(gx).all()
    gx2, gt2 = grad.lookup_backward(x, tables, gy, spec, need_x=False, need_tables=True, strategy=strategy)
    assert gx2 is None and torch.isfinite(gt2).all()
    torch.testing.assert_close(gx, both[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gt2, both[1], rtol=1e-6, atol=1e-6)


@interpreted
def test_decode_kernel_leaves_its_workspace_zeroed_and_repeats_exactly(poisoned):
    """Each call's last program per tile zeroes the accumulator and the semaphore it used, so a second call
    (and a CUDA graph replay) starts from zero; splits over tables and columns are both exercised here."""
    spec = LookupSpec(8)
    x, tables = torch.randn(5, 8 * 7), torch.randn(7, 256, 70)
    first = kernels.lookup_forward(x, tables, spec, kernel="decode")
    ws, sem = kernels.decode_workspace(x, torch.float32, 5, 70)
    assert not ws.any() and not sem.any()
    assert torch.equal(kernels.lookup_forward(x, tables, spec, kernel="decode"), first)
    torch.testing.assert_close(first, kernels.lookup_forward(x, tables, spec, kernel="gather"), rtol=1e-6, atol=1e-6)


def test_an_outgrown_decode_workspace_is_kept_alive_for_graphs_captured_on_it():
    import gc
    import weakref

    x = torch.empty(1, 8, dtype=torch.float64)  # a dtype of its own: no other test's workspace
    small, small_sem = kernels.decode_workspace(x, torch.float64, 3, 40)
    kept = weakref.ref(small)
    assert kernels.decode_workspace(x, torch.float64, 2, 40)[0] is small  # big enough: the same pair
    big, big_sem = kernels.decode_workspace(x, torch.float64, 30, 400)
    assert big.numel() >= 30 * 400 and big_sem.numel() > small_sem.numel() and not big.any()
    del small, small_sem
    gc.collect()
    assert kept() is not None


def test_forward_kernel_by_token_count_config_and_unknown_names():
    assert kernels.forward_kernel(1) == kernels.forward_kernel(kernels.DECODE_MAX_TOKENS) == "decode"
    assert kernels.forward_kernel(kernels.DECODE_MAX_TOKENS + 1) == "gather"
    assert kernels.forward_kernel(1, {"BLOCK_S": 16, "BLOCK_H": 32, "UNROLL": 2}) == "gather"
    assert kernels.forward_kernel(4096, kernels.INTERPRETER_DECODE) == "decode"
    with pytest.raises(ValueError, match="unknown forward kernel 'tiled'; choose one of gather, decode"):
        kernels.lookup_forward(torch.randn(2, 8), torch.randn(1, 256, 4), LookupSpec(8), kernel="tiled")


def test_backward_strategy_by_shape_and_unknown_names():
    assert grad.backward_strategy(2048, 512, 256) == "fused"
    assert grad.backward_strategy(8192, 512, 256) == "sorted"
    assert grad.backward_strategy(2048, 2048, 256) == "sorted"
    assert grad.backward_strategy(2048, 512, 256, torch.float64) == "sorted"
    with pytest.raises(ValueError, match="unknown backward strategy 'atomics'; choose one of fused, sorted"):
        grad.lookup_backward(torch.randn(4, 8), torch.randn(1, 256, 4), torch.randn(4, 4), LookupSpec(8),
                                strategy="atomics")


@interpreted
def test_autograd_function_and_out_buffer():
    spec = LookupSpec(4, "released")
    x = torch.randn(7, 8, requires_grad=True)
    tables = torch.randn(2, 16, 5, requires_grad=True)
    y = grad.memory_lookup(x, tables, spec)
    y.sum().backward()
    ref = reference_lookup(x.detach(), tables.detach(), spec)
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-6)
    out = torch.full((7, 5), float("nan"))
    assert kernels.lookup_forward(x.detach(), tables.detach(), spec, out=out) is out
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="out must be"):
        kernels.lookup_forward(x.detach(), tables.detach(), spec, out=torch.empty(7, 4))


@interpreted
def test_256_rows_one_second_scale_case(poisoned):
    spec = LookupSpec(8)
    x, tables = torch.randn(256, 64), torch.randn(8, 256, 64)
    torch.testing.assert_close(kernels.lookup_forward(x, tables, spec), reference_lookup(x, tables, spec),
                               rtol=1e-5, atol=1e-5)


def _float64_against_reference(device, weighting, temperature):
    spec = LookupSpec(4, weighting, temperature)
    x = torch.randn(9, 12, dtype=torch.float64)
    x[0, :4] = -1e-50
    x[1, 4:8] = torch.tensor([1e-50, -1e-50, -1e-300, -5e-324], dtype=torch.float64)  # the last is subnormal
    x[2, 8:] = torch.tensor([-1e-46, 2.0, -3e-46, -1e-100], dtype=torch.float64)  # below float32's subnormals
    z = split_chunks(x, spec.tau)
    assert (sign_hash(z) != sign_hash(z.float())).sum() >= 3  # the input would catch a float32 hash
    tables = torch.randn(3, 16, 7, dtype=torch.float64)
    gy = torch.randn(9, 7, dtype=torch.float64)
    x64, t64 = x.clone().requires_grad_(), tables.clone().requires_grad_()
    ref = reference_lookup(x64, t64, spec)
    rgx, rgt = torch.autograd.grad(ref, (x64, t64), gy)
    x, tables, gy = x.to(device), tables.to(device), gy.to(device)

    idx, p = kernels.hash_and_weight(x, spec)
    assert p.dtype == torch.float64
    assert torch.equal(idx.long().T.cpu(), sign_hash(z))
    torch.testing.assert_close(p.T.cpu(), bucket_weight(z, spec.weighting, spec.temperature), rtol=1e-13, atol=0)
    for kernel in kernels.FORWARD_KERNELS:
        y = kernels.lookup_forward(x, tables, spec, kernel=kernel)
        torch.testing.assert_close(y.cpu(), ref, rtol=1e-12, atol=1e-12)
        assert y.dtype == torch.float64
    gx, gt = grad.lookup_backward(x, tables, gy, spec)
    assert gx.dtype == gt.dtype == torch.float64
    for got, want in ((gx, rgx), (gt, rgt)):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="float64 takes strategy='sorted'"):
        grad.lookup_backward(x, tables, gy, spec, strategy="fused")


@interpreted
@pytest.mark.parametrize("weighting, temperature", [("paper", 0.7), ("released", 1.0)])
def test_float64_is_hashed_weighted_and_summed_in_float64(poisoned, weighting, temperature):
    """float64 input is computed in float64: tiny negatives keep their sign bit (in float32 -1e-50 is -0.0,
    which hashes as non-negative), and 2/t = 2/0.7 is not rounded to float32 on the way in."""
    _float64_against_reference("cpu", weighting, temperature)


def test_dtypes_without_a_kernel_path_are_refused_by_name():
    spec = LookupSpec(8)
    x, tables = torch.randint(-3, 3, (3, 16)), torch.randint(-3, 3, (2, 256, 4))
    with pytest.raises(TypeError, match=r"takes torch.float16, torch.bfloat16, torch.float32, torch.float64 input, "
                                        r"not torch.int64"):
        kernels.lookup_forward(x, tables, spec)


def test_shape_checks():
    spec = LookupSpec(8)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.lookup_forward(torch.randn(3, 16), torch.randn(3, 256, 4), spec)
    with pytest.raises(TypeError, match="float16"):
        kernels.lookup_forward(torch.randn(3, 16), torch.randn(2, 256, 4, dtype=torch.float16), spec)


# --- on the GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES["gpu"] + CASES["paper"], ids=lambda c: c.name)
def test_benchmark_shapes_on_gpu(case, poisoned):
    dtype = torch.float16
    layer = make_layer(case, "triton", torch.device("cuda"), dtype)
    for seed in (1, 2):  # fresh random inputs each time
        x, gy = random_input(case, torch.device("cuda"), dtype, seed)
        errors = relative_errors(layer, x, gy, case.direction)
        assert all(v <= TOLERANCE[dtype] for v in errors.values()), errors


DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("width", [1024, 2048, 4096, 8192])
def test_decode_shapes_on_gpu(width, poisoned):
    """The forward at the decode benchmark's shapes (d = h, 1 to 64 tokens), each kernel, on two fresh inputs:
    the second call checks the workspace the first left behind."""
    from mfbench.bench.cases import Case

    case = Case("forward", max(DECODE_BATCHES), width, width)
    layer = make_layer(case, "triton", torch.device("cuda"), torch.float16)
    for seed in (1, 2):
        x, _ = random_input(case, torch.device("cuda"), torch.float16, seed)
        ref = reference_lookup(x.double(), layer.tables.double(), layer.spec)
        for tokens in DECODE_BATCHES:
            for kernel in kernels.FORWARD_KERNELS:
                y = kernels.lookup_forward(x[:tokens], layer.tables, layer.spec, kernel=kernel)
                assert relative_error(y, ref[:tokens]) <= TOLERANCE[torch.float16], (kernel, tokens, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighting", ["paper", "released"])
def test_dtypes_and_weightings_on_gpu(dtype, weighting, poisoned):
    from mfbench.bench.cases import Case

    case = Case("backward", 3000, 640, 700, tau=10, weighting=weighting)
    layer = make_layer(case, "triton", torch.device("cuda"), dtype)
    x, gy = random_input(case, torch.device("cuda"), dtype, 5)
    errors = relative_errors(layer, x, gy, "backward")
    errors.update(relative_errors(layer, x, gy, "forward"))
    assert all(v <= TOLERANCE[dtype] * 2 for v in errors.values()), errors


@pytest.mark.gpu
@pytest.mark.parametrize("weighting, temperature", [("paper", 0.7), ("released", 1.0)])
def test_float64_is_computed_in_float64_on_gpu(poisoned, weighting, temperature):
    """Compiled, 2/t reaches the kernels as a float64 argument (a plain float argument is float32)."""
    _float64_against_reference("cuda", weighting, temperature)


@pytest.mark.gpu
def test_model_end_to_end_triton_matches_reference_on_gpu():
    from mfbench.core.model import MemoryFormerLM, ModelConfig

    cfg = ModelConfig.preset("tiny")
    model = MemoryFormerLM(cfg).cuda()
    idx = torch.randint(0, cfg.vocab_size, (2, 256), device="cuda")
    with torch.no_grad():
        ref = model(idx)
        model.set_provider("triton")
        got = model(idx)
    assert relative_error(got, ref) < 1e-4
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_mfbench_process_shares_one_triton_cache(tmp_path):
    """Inductor would otherwise move TRITON_CACHE_DIR to a per-device folder mid-process (see
    mfbench.config.triton_cache_env): the entry points choose the shared cache, importing mfbench does not;
    a user's own TRITON_CACHE_DIR is kept."""
    import subprocess
    import sys

    code = ("import os, mfbench; print(os.environ.get('TRITON_CACHE_DIR'))\n"
            "from mfbench.shells.cli.main import main; main(['flops']); print(os.environ['TRITON_CACHE_DIR'])")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_CACHE_DIR", "TRITON_HOME")}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = default.stdout.strip().splitlines()
    assert lines[0] == "None" and lines[-1] == os.path.join(os.path.expanduser("~"), ".triton", "cache")
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "TRITON_CACHE_DIR": str(tmp_path)},
                          capture_output=True, text=True, check=True)
    assert mine.stdout.strip().splitlines()[-1] == str(tmp_path)
