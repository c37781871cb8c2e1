"""Analytic operation counts for MemoryFormer and the dense transformer, and counted FLOPs for comparison.

Two conventions, always labelled: the paper's (one multiply-add = 1 FLOP) and the usual hardware one
(2 FLOPs per multiply-add, what ``torch.utils.flop_counter.FlopCounterMode`` counts). Element-wise work
that is not a multiply-add (sign hashing, bucket weights) counts 1 per operation in both.
Counts are per sequence of ``s`` tokens (batch 1); attention counts the full s x s score matrix, as the
paper does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mfbench.core.model import ModelConfig

CONVENTIONS = {"paper": "multiply-add = 1 FLOP (the paper's)", "2mac": "multiply-add = 2 FLOPs"}


@dataclass(frozen=True)
class OpCount:
    macs: int
    elementwise: int = 0

    def __add__(self, other: "OpCount") -> "OpCount":
        return OpCount(self.macs + other.macs, self.elementwise + other.elementwise)

    def __mul__(self, n: int) -> "OpCount":
        return OpCount(self.macs * n, self.elementwise * n)

    __rmul__ = __mul__

    def flops(self, convention: str = "paper") -> int:
        if convention == "paper":
            return self.macs + self.elementwise
        if convention == "2mac":
            return 2 * self.macs + self.elementwise
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")


# --- layers ------------------------------------------------------------------------------------------


def linear(tokens: int, in_features: int, out_features: int) -> OpCount:
    return OpCount(tokens * in_features * out_features)


def attention(s: int, d: int, past: int = 0) -> OpCount:
    """Q K^T and the weighted sum of V: 2 s^2 d multiply-adds; s new tokens after ``past`` cached ones
    (a decode step) score against all s + past keys."""
    return OpCount(2 * s * (s + past) * d)


def memory_layer(tokens: int, in_features: int, out_features: int, tau: int, weighting: str = "paper") -> OpCount:
    """K = in/tau rows of width ``out_features`` summed with weights (Eq. 11), plus per input element one
    sign test and shift-add for the hash (Eq. 2-4) and one sigmoid-and-product for the weight (Eq. 10);
    the released weighting adds the L1 norm (one more per element)."""
    k = in_features // tau
    per_element = 2 + (weighting == "released")
    return OpCount(tokens * k * out_features, tokens * in_features * per_element)


# --- blocks ------------------------------------------------------------------------------------------


def dense_block(s: int, d: int, past: int = 0) -> OpCount:
    """QKV (3 d^2), output projection (d^2), 4x MLP (8 d^2) per token: 2 s^2 d + 12 s d^2."""
    return attention(s, d, past) + linear(s, d, 3 * d) + linear(s, d, d) + linear(s, d, 4 * d) + linear(s, 4 * d, d)


def memoryformer_block_paper(s: int, d: int, k: int) -> OpCount:
    """The paper's approximation: 2 s^2 d + 6 K s d."""
    return attention(s, d) + OpCount(6 * k * s * d)


def memoryformer_block(s: int, cfg: ModelConfig, past: int = 0) -> OpCount:
    """Op by op: attention; Q/K/V as one d -> 3d Memory Layer; Memory Block (d -> (tau+2)K -> d)."""
    d, k, tau, w = cfg.d_model, cfg.num_chunks, cfg.tau, cfg.weighting
    wide = (tau + 2) * k
    return (attention(s, d, past) + memory_layer(s, d, 3 * d, tau, w) + memory_layer(s, d, wide, tau, w)
            + memory_layer(s, wide, d, tau + 2, w))


def lm_head(s: int, cfg: ModelConfig) -> OpCount:
    return linear(s, cfg.d_model, cfg.vocab_size)


def model(architecture: str, s: int, cfg: ModelConfig, past: int = 0) -> OpCount:
    """A whole LM: ``n_layer`` blocks and the dense LM head (embedding lookups cost no FLOPs); with ``past``,
    s new tokens of one sequence after ``past`` cached ones."""
    if architecture == "memoryformer":
        block = memoryformer_block(s, cfg, past)
    elif architecture == "dense":
        block = dense_block(s, cfg.d_model, past)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose 'memoryformer' or 'dense'")
    return block * cfg.n_layer + lm_head(s, cfg)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that torch's FlopCounterMode counts while running ``fn`` (2 per multiply-add; matmul-like ops only).

    Attention runs through SDPA's math backend while counting: FlopCounterMode has no formula for the
    fused CPU kernel and would silently count its 4 s^2 d FLOPs as zero.
    """
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# --- paper Table 1 -----------------------------------------------------------------------------------

# (model, layers, d, K or None, printed w/o attention, printed total), per block at s = 2048, in GFLOPs.
PAPER_TABLE1 = [
    ("Pythia-70M", 6, 512, None, 6.4, 10.7),
    ("MemoryFormer-tiny", 6, 512, 64, 0.4, 4.7),
    ("Pythia-160M", 12, 768, None, 14.5, 20.9),
    ("MemoryFormer-small", 12, 768, 96, 1.0, 7.4),
    ("Pythia-410M", 24, 1024, None, 25.8, 34.4),
    ("MemoryFormer-base", 24, 1024, 128, 1.6, 10.2),
]


def table1(s: int = 2048) -> pd.DataFrame:
    """Paper Table 1 recomputed from the paper's formulas, beside the printed figures (paper convention).

    ``agrees_with_print`` is False where the formula, rounded as the paper rounds (0.1 G), differs from
    the printed figure; the formula is kept, not bent. ``flops_total_exact`` counts the MemoryFormer
    block op by op (``memoryformer_block``); for the dense rows it equals the formula.
    """
    rows = []
    for name, layers, d, k, printed_wo, printed_total in PAPER_TABLE1:
        if k is None:
            total = dense_block(s, d).flops("paper")
            exact = total
        else:
            total = memoryformer_block_paper(s, d, k).flops("paper")
            cfg = ModelConfig(name, n_layer=layers, d_model=d, n_head=d // 64, tau=d // k)
            exact = memoryformer_block(s, cfg).flops("paper")
        wo_attn = total - attention(s, d).flops("paper")
        agrees = round(wo_attn / 1e9, 1) == printed_wo and round(total / 1e9, 1) == printed_total
        rows.append({
            "model": name, "layers": layers, "d": d, "K": k,
            "flops_wo_attn": wo_attn, "flops_total": total,
            "paper_flops_wo_attn": printed_wo * 1e9, "paper_flops_total": printed_total * 1e9,
            "flops_total_exact": exact, "agrees_with_print": agrees,
            "note": "" if agrees else "printed figure disagrees with the paper's own formula",
        })
    table = pd.DataFrame(rows)
    table["K"] = table["K"].astype("Int64")
    return table
