"""The ``sharded`` provider: a Memory Layer whose K chunk tables are split over the ranks of a process
group, for tables too large for one device.

Rank r owns chunks [start_r, stop_r). Every rank holds the whole input x (replicated); it looks up its own
chunks and the partial sums are added by an all-reduce (Eq. 11 is a sum over chunks, and each chunk's
hash and weights depend on that chunk alone, so the partial sums add up exactly). Backward is the mirror
image, as in Megatron's row-parallel linear: the output's gradient is already replicated, each rank forms
its own tables' gradient, and the input's gradient (non-zero only on the rank's own chunk columns) is
all-reduced.

``shard_tables(layer)`` keeps only the rank's slice of ``layer.tables`` (K/N of the memory); a layer
that was not sharded is sliced on the fly, which gives the same numbers without the memory saving.
``python -m mfbench.shells.sharded_check`` under torchrun checks it against the whole layer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mfbench.core.lookup import reference_lookup


def chunk_range(num_chunks: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s chunks: a contiguous, balanced share of ``num_chunks`` (sizes differ by at most 1)."""
    return rank * num_chunks // world, (rank + 1) * num_chunks // world


class _AllReduceForward(torch.autograd.Function):
    """y = sum over ranks of y_r; the replicated y's gradient goes back to each y_r unchanged."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor) -> torch.Tensor:
        out = partial.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _AllReduceBackward(torch.autograd.Function):
    """Identity forward; the gradient, partial on each rank, is summed over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def shard_tables(layer) -> None:
    """Keep only this rank's chunk tables in ``layer`` (and route it through ``sharded``)."""
    if getattr(layer, "shard", None) is not None:
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    start, stop = chunk_range(layer.num_chunks, rank, world)
    layer.tables = torch.nn.Parameter(layer.tables.detach()[start:stop].clone())
    layer.shard = (start, stop)
    layer.provider = "sharded"


def _local_lookup(x: torch.Tensor, tables: torch.Tensor, layer) -> torch.Tensor:
    if x.is_cuda:
        from mfbench.kernels.lookup_grad import memory_lookup

        return memory_lookup(x, tables, layer.spec)
    return reference_lookup(x, tables, layer.spec, layer.max_chunk_bytes)


def sharded_lookup(layer, x: torch.Tensor) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    start, stop = chunk_range(layer.num_chunks, rank, world)
    own = getattr(layer, "shard", None)
    if own is not None and own != (start, stop):
        raise RuntimeError(f"layer was sharded as chunks {own}, but this rank owns {(start, stop)}")
    tables = layer.tables if own is not None else layer.tables[start:stop]
    x = _AllReduceBackward.apply(x)
    tau = layer.spec.tau
    if stop > start:
        partial = _local_lookup(x[:, start * tau:stop * tau].contiguous(), tables, layer)
    else:  # more ranks than chunks: this rank contributes nothing
        partial = x.new_zeros(x.shape[0], layer.out_features) + 0 * x.sum()
    return _AllReduceForward.apply(partial.to(x.dtype))


def requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    if not (dist.is_available() and dist.is_initialized()):
        return "needs a torch.distributed process group (run under torchrun)"
    backend = dist.get_backend()
    if device.type == "cuda" and backend != "nccl":
        return f"CUDA tensors need the nccl backend, this group uses {backend}"
    if device.type == "cpu" and backend != "gloo":
        return f"CPU tensors need the gloo backend, this group uses {backend}"
    return None
