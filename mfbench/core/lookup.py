"""The Memory Layer's lookup, stated in plain PyTorch: the reference every provider is checked against.

Equation numbers are those of Ding et al., "MemoryFormer" (NeurIPS 2024). A Memory Layer replaces
``nn.Linear(d, h)``: the input ``x`` (d values) is cut into K = d/tau chunks (Eq. 6); each chunk ``z_k`` is
hashed by the signs of its entries (Eq. 2-4) to a row of its own table ``T_k`` (2**tau rows of width h),
and the rows are summed with weights ``p(z_k)`` (Eq. 11).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint

WEIGHTINGS = ("paper", "released")
MIN_TAU, MAX_TAU = 1, 10

# The reference never materialises more than this many bytes of gathered rows at once.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def is_integer(value) -> bool:
    """An int that is not a bool (True is an int in Python, and tau=True must not read as tau=1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_integer(label: str, value) -> None:
    if not is_integer(value) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class LookupSpec:
    """Everything about a Memory Layer's lookup that is not a tensor."""

    tau: int = 8
    weighting: str = "paper"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not is_integer(self.tau) or not MIN_TAU <= self.tau <= MAX_TAU:
            raise ValueError(f"tau must be an integer in [{MIN_TAU}, {MAX_TAU}], got {self.tau!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if isinstance(self.temperature, bool) or not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if self.weighting == "released" and self.temperature != 1.0:
            raise ValueError("the released weighting fixes the temperature at 1; use weighting='paper' to vary it")

    @property
    def rows(self) -> int:
        """Rows per table: one per sign pattern of a tau-wide chunk."""
        return 2**self.tau


_input_checks = True


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Turn the scans of input values on or off: NaN/Inf in a Memory Layer's input, the token-id range of
    a language model's (each costs a pass and, on a GPU, a sync inside every call)."""
    global _input_checks
    previous, _input_checks = _input_checks, enabled
    try:
        yield
    finally:
        _input_checks = previous


def checks_enabled() -> bool:
    return _input_checks


def check_input(x: torch.Tensor, in_features: int) -> None:
    """Raise a clear TypeError/ValueError for input a Memory Layer cannot take."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a Memory Layer takes a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"a Memory Layer needs floating-point input, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"expected input whose last dimension is in_features={in_features}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"empty input (shape {tuple(x.shape)}): a Memory Layer needs at least one token")
    if _input_checks and not bool(torch.isfinite(x).all()):
        raise ValueError("input contains NaN or Inf: its sign hash would be meaningless")


def split_chunks(x: torch.Tensor, tau: int) -> torch.Tensor:
    """Eq. 6: view (..., d) as (..., K, tau) with K = d / tau."""
    d = x.shape[-1]
    if d % tau:
        raise ValueError(f"in_features={d} is not divisible by tau={tau}")
    return x.unflatten(-1, (d // tau, tau))


def sign_hash(z: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Eq. 2-4: bit i of a chunk's index is 1 where z[i] >= 0; index = sum_i bit_i * 2**i."""
    tau = z.shape[-1]
    # A float32 product with the powers of two: exact (indices < 2**MAX_TAU), and 5x faster on a CPU than
    # an int64 multiply-and-sum (6 against 30 ms at s = 8192, d = 512, two cores).
    powers = 2.0 ** torch.arange(tau, device=z.device, dtype=torch.float32)
    return ((z >= 0).to(torch.float32) @ powers).to(dtype)


def bucket_weight(z: torch.Tensor, weighting: str = "paper", temperature: float = 1.0) -> torch.Tensor:
    """The weight of each chunk's retrieved row, shape (..., K).

    ``paper`` (Eq. 8-10): the softmax over all 2**tau sign codes, whose denominator factorises into
    prod_i sigma(2|z_i|/t). ``released``: the authors' code, ||z||_1 * prod_i sigma(2|z_i|) with t = 1.
    Each sigma is at least 1/2, so the product of at most MAX_TAU of them cannot underflow; taken directly
    it costs a sixth of exp(sum log sigma) on a CPU (7 against 39 ms at s = 8192, d = 512).
    """
    a = z.abs()
    q = torch.sigmoid(2.0 * a / temperature).prod(-1)
    if weighting == "paper":
        return q
    if weighting == "released":
        return a.sum(-1) * q
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision tables are summed in float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def chunk_tokens(num_chunks: int, out_features: int, dtype: torch.dtype, max_bytes: int) -> int:
    """How many tokens the reference may gather at once within ``max_bytes`` of intermediates."""
    elem = torch.finfo(dtype).bits // 8
    acc = torch.finfo(compute_dtype(dtype)).bits // 8
    per_token = num_chunks * out_features * (elem + (acc if acc != elem else 0))
    return max(1, max_bytes // per_token)


def lookup_block(z: torch.Tensor, tables: torch.Tensor, spec: LookupSpec) -> torch.Tensor:
    """Eq. 11 for a block of tokens: y = sum_k p(z_k) * T_k[h(z_k)], summed in ``compute_dtype``."""
    k = torch.arange(tables.shape[0], device=tables.device)
    rows = tables[k, sign_hash(z)]  # (tokens, K, h): the gather the memory budget bounds
    acc = compute_dtype(tables.dtype)
    p = bucket_weight(z.to(acc), spec.weighting, spec.temperature)
    return torch.bmm(p.unsqueeze(1), rows.to(acc)).squeeze(1)


def reference_lookup(
    x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """The Memory Layer without bias: x (S, d) and tables (K, 2**tau, h) give y (S, h) in x's dtype.

    Tokens are processed in blocks whose gathered rows fit ``max_chunk_bytes``; under autograd each block
    is checkpointed, so the backward pass regathers one block at a time instead of keeping all of them.
    """
    z = split_chunks(x, spec.tau)
    num_chunks, _, out_features = tables.shape
    step = chunk_tokens(num_chunks, out_features, tables.dtype, max_chunk_bytes)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or tables.requires_grad)
    blocks = []
    for start in range(0, z.shape[0], step):
        zb = z[start : start + step]
        if needs_grad:
            blocks.append(checkpoint(lookup_block, zb, tables, spec, use_reentrant=False))
        else:
            blocks.append(lookup_block(zb, tables, spec))
    return torch.cat(blocks).to(x.dtype)
