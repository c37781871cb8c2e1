"""The reference lookup against independent statements of the paper's equations."""

import itertools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfbench.core.lookup import (LookupSpec, bucket_weight, chunk_tokens, input_checks, reference_lookup, sign_hash,
                            split_chunks)


def eq11_by_hand(x, tables, tau, temperature, weighting):
    """Eq. 2-4, 10 and 11 written out token by token, chunk by chunk, in float64."""
    s, d = x.shape
    y = torch.zeros(s, tables.shape[2], dtype=torch.float64)
    for i in range(s):
        for k in range(d // tau):
            z = [float(v) for v in x[i, k * tau:(k + 1) * tau]]
            index = sum((1 << b) for b, v in enumerate(z) if v >= 0)
            p = math.prod(1.0 / (1.0 + math.exp(-2.0 * abs(v) / temperature)) for v in z)
            if weighting == "released":
                p *= sum(abs(v) for v in z)
            y[i] += p * tables[k, index].double()
    return y


@pytest.mark.parametrize("weighting,temperature", [("paper", 1.0), ("paper", 0.5), ("released", 1.0)])
@pytest.mark.parametrize("tau", [4, 8])
def test_forward_matches_equations(tau, weighting, temperature):
    x = torch.randn(7, 3 * tau, dtype=torch.float64)
    tables = torch.randn(3, 2**tau, 5, dtype=torch.float64)
    got = reference_lookup(x, tables, LookupSpec(tau, weighting, temperature))
    torch.testing.assert_close(got, eq11_by_hand(x, tables, tau, temperature, weighting), rtol=1e-12, atol=1e-12)


@given(tau=st.integers(1, 10), temperature=st.floats(0.1, 4.0), seed=st.integers(0, 2**16))
def test_factorised_weight_equals_softmax_over_all_codes(tau, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, tau, dtype=torch.float64, generator=g)
    # Every sign code c as a +-1 vector (bit i set -> +1), and the softmax of <c, z>/t over all 2**tau codes.
    codes = torch.tensor(list(itertools.product([0, 1], repeat=tau)), dtype=torch.float64).flip(-1)
    signs = 2 * codes - 1
    index = (codes * 2 ** torch.arange(tau, dtype=torch.float64)).sum(-1).long()
    probs = torch.softmax(z @ signs.T / temperature, dim=-1)
    explicit = probs.gather(1, torch.argsort(index)[sign_hash(z)].unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(bucket_weight(z, "paper", temperature), explicit, rtol=1e-10, atol=1e-12)
    assert ((explicit >= 2.0**-tau - 1e-12) & (explicit <= 1)).all()


def test_sign_hash_bits():
    z = torch.tensor([[1.0, -1.0, 0.0, -0.0], [-2.0, -2.0, -2.0, 3.0]])
    assert sign_hash(z).tolist() == [1 + 4 + 8, 8]


@pytest.mark.parametrize("weighting,temperature", [("paper", 1.0), ("paper", 0.7), ("released", 1.0)])
def test_gradcheck(weighting, temperature):
    spec = LookupSpec(4, weighting, temperature)
    x = (torch.randn(5, 8, dtype=torch.float64) + 0.05).requires_grad_()
    tables = torch.randn(2, 16, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: reference_lookup(a, b, spec, max_chunk_bytes=64), (x, tables))


def test_table_gradient_only_in_hit_rows():
    spec = LookupSpec(8)
    x = torch.randn(40, 24, dtype=torch.float64)
    tables = torch.randn(3, 256, 4, dtype=torch.float64, requires_grad=True)
    reference_lookup(x, tables, spec).sum().backward()
    hit = torch.zeros(3, 256, dtype=torch.bool)
    hit[torch.arange(3).expand(40, 3), sign_hash(split_chunks(x, 8))] = True
    row_has_grad = tables.grad.abs().sum(-1) > 0
    assert torch.equal(row_has_grad, hit)
    assert 0 < int(hit.sum()) < 3 * 256


def test_bucket_use_near_uniform_on_normalised_input():
    # LayerNorm makes a token's entries sum to zero, a slight pull towards balanced sign patterns, so this
    # asks for near-uniform (total variation under 5%, every bucket within 0.6x-1.4x of its share), not iid.
    x = torch.nn.functional.layer_norm(torch.randn(20000, 64), (64,))
    counts = torch.bincount(sign_hash(split_chunks(x, 8)).flatten(), minlength=256).double()
    share = counts / counts.sum()
    assert float((share - 1 / 256).abs().sum() / 2) < 0.05
    assert 0.6 < float(counts.min() / counts.mean()) and float(counts.max() / counts.mean()) < 1.4


@pytest.mark.parametrize("budget", [1, 100, 10**9])
def test_token_blocking_does_not_change_result(budget):
    spec = LookupSpec(4)
    x = torch.randn(33, 12, dtype=torch.float64, requires_grad=True)
    tables = torch.randn(3, 16, 7, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(33, 7, dtype=torch.float64)
    y_ref = reference_lookup(x, tables, spec, max_chunk_bytes=10**12)
    want = torch.autograd.grad(y_ref, (x, tables), gy)
    y = reference_lookup(x, tables, spec, max_chunk_bytes=budget)
    got = torch.autograd.grad(y, (x, tables), gy)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_chunk_tokens_respects_budget():
    # s=32768, d=h=2048 (K=256): the unblocked gather would be 64 GiB in fp16 plus its fp32 copy.
    step = chunk_tokens(256, 2048, torch.float16, 256 * 2**20)
    assert step * 256 * 2048 * (2 + 4) <= 256 * 2**20
    assert step >= 1


_RSS_SCRIPT = textwrap.dedent("""
    import sys, torch
    from mfbench.core.lookup import LookupSpec, reference_lookup
    from mfbench.instruments.memory import peak_rss_bytes, reset_peak_rss
    torch.set_num_threads(1)
    budget, grad = int(sys.argv[1]), sys.argv[2] == "1"
    x = torch.randn(8192, 512)
    tables = torch.randn(64, 256, 512, requires_grad=grad)
    spec = LookupSpec(8)
    reference_lookup(x[:8], tables.detach(), spec, budget)  # load kernels before the baseline
    assert reset_peak_rss(), "cannot reset the peak RSS mark"
    before = peak_rss_bytes()
    if grad:
        x.requires_grad_()
        y = reference_lookup(x, tables, spec, budget)
        y.backward(torch.ones_like(y))
    else:
        with torch.no_grad():
            y = reference_lookup(x, tables, spec, budget)
    print(peak_rss_bytes() - before)
""")


def _peak_extra_bytes(budget: int, grad: bool) -> int:
    # With glibc's mmap threshold fixed at 64 KiB every tensor buffer is its own mapping, returned on free,
    # so the peak RSS follows live tensors instead of heap fragmentation (which varied it by 10x here).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(budget), "1" if grad else "0"],
                         capture_output=True, text=True, check=True, timeout=300, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_bounded_by_chunk_budget():
    """s=8192, d=h=512: the unblocked gather is 1 GiB. With a 4 MiB budget the forward's peak grows by
    y and its blocks (2 x 16 MiB) and one block of rows; the backward regathers block by block and adds
    the gradients and a table-shaped scatter buffer or two (32 MiB each), none of which grows with s."""
    assert _peak_extra_bytes(2**31, grad=False) > 512 * 2**20, "control: the unblocked 1 GiB gather must show"
    assert _peak_extra_bytes(4 * 2**20, grad=False) < 64 * 2**20
    assert _peak_extra_bytes(4 * 2**20, grad=True) < 384 * 2**20


def test_input_checks_can_be_disabled():
    from mfbench.core.lookup import check_input

    bad = torch.tensor([[float("nan")] * 8])
    with pytest.raises(ValueError, match="NaN"):
        check_input(bad, 8)
    with input_checks(False):
        check_input(bad, 8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(tau=0), "tau"), (dict(tau=11), "tau"), (dict(weighting="nope"), "weighting"),
    (dict(temperature=0.0), "temperature"), (dict(weighting="released", temperature=2.0), "temperature"),
])
def test_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LookupSpec(**kwargs)
