"""An mfbench provider from outside mfbench: the Memory Layer's lookup as one gather of every (token,
chunk) row and a weighted sum, plus the same under ``torch.compile`` with max-autotune.

Installed, its ``mfbench.providers`` entry point calls ``register``; nothing in mfbench names it.
"""

from __future__ import annotations

import functools

import torch

import mfbench
from mfbench.core.lookup import bucket_weight, sign_hash, split_chunks


def gather_sum(layer, x: torch.Tensor) -> torch.Tensor:
    """hash in torch, one index_select of every (token, chunk) row, then a weighted sum over chunks"""
    z = split_chunks(x, layer.spec.tau)  # (tokens, K, tau)
    chunks, rows, out = layer.tables.shape
    index = sign_hash(z) + torch.arange(chunks, device=x.device) * rows  # (tokens, K): a row of the flat tables
    weight = bucket_weight(z, layer.spec.weighting, layer.spec.temperature)  # (tokens, K)
    gathered = layer.tables.reshape(chunks * rows, out).index_select(0, index.flatten()).view(*index.shape, out)
    return torch.einsum("tk,tko->to", weight.to(gathered.dtype), gathered).to(x.dtype)


@functools.lru_cache(maxsize=None)
def _compiled():
    # max-autotune tries Triton templates for the sum; without CUDA graphs, since mfbench replays calls itself
    return torch.compile(gather_sum, mode="max-autotune-no-cudagraphs")


def compiled_gather_sum(layer, x: torch.Tensor) -> torch.Tensor:
    """gather_sum under torch.compile(mode='max-autotune-no-cudagraphs')"""
    return _compiled()(layer, x)


def _inductor_probe() -> str | None:
    """Why this machine cannot run the compiled variant (None: it can)."""
    try:
        import torch._inductor  # noqa: F401
    except ImportError as exc:
        return f"torch inductor is not importable ({exc})"
    return None


def register() -> None:
    mfbench.register_provider(
        "example_gather", gather_sum, exact=True,
        description="example plugin: one gather of every (token, chunk) row, then a weighted sum",
        devices=("cpu", "cuda"), dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16),
    )
    # max-autotune compiles for minutes on a CPU: declared for CUDA only, so a CPU run skips it, saying why
    mfbench.register_provider(
        "example_compiled", compiled_gather_sum, exact=True,
        description="example plugin: gather_sum under torch.compile max-autotune",
        devices=("cuda",), probe=_inductor_probe, compiles_per_process=True,
    )
