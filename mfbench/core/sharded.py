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
        from mfbench.kernels.lookup import memory_lookup

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


def check(tokens: int = 256, in_features: int = 512, out_features: int = 384, tau: int = 8,
          dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> dict:
    """Under a process group: the sharded layer (tables split with ``shard_tables``) against the whole layer
    through ``reference`` on every rank: output, input gradient and this rank's tables gradient, as
    relative errors. Every rank builds the same layer and input from the same seed."""
    from mfbench.core.model import MemoryLayer

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    whole = MemoryLayer(in_features, out_features, tau, provider="reference").to(device=device, dtype=dtype)
    x = torch.randn(tokens, in_features, device=device, dtype=dtype)
    grad_y = torch.randn(tokens, out_features, device=device, dtype=dtype)
    x_ref = x.clone().requires_grad_(True)
    y_ref = whole(x_ref)
    y_ref.backward(grad_y)
    part = MemoryLayer(in_features, out_features, tau).to(device=device, dtype=dtype)
    part.load_state_dict(whole.state_dict())
    shard_tables(part)
    x_sh = x.clone().requires_grad_(True)
    y_sh = part(x_sh)
    y_sh.backward(grad_y)
    start, stop = part.shard

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "chunks": [start, stop],
            "table_bytes_per_rank": part.tables.numel() * part.tables.element_size(),
            "table_bytes_whole": whole.tables.numel() * whole.tables.element_size(),
            "rel_err_y": rel(y_sh, y_ref), "rel_err_grad_x": rel(x_sh.grad, x_ref.grad),
            "rel_err_grad_tables": rel(part.tables.grad, whole.tables.grad[start:stop])}


def main() -> int:
    """``torchrun --nproc-per-node N -m mfbench.core.sharded``: check the sharded provider against reference."""
    import json
    import os
    import sys

    from mfbench.shells import distributed

    try:
        device = distributed.init("cuda" if torch.cuda.is_available() and os.environ.get("MFBENCH_DEVICE") != "cpu" else "cpu")
    except distributed.LaunchError as exc:
        print(f"mfbench.core.sharded: error: {exc}", file=sys.stderr)
        return 2
    dtype = torch.float32
    tolerance = 1e-5
    results = [check(device=device, dtype=dtype), check(tokens=64, in_features=80, out_features=48, tau=10, device=device)]
    gathered = distributed.gather(results)
    dist.barrier()
    dist.destroy_process_group()
    if gathered is None:
        return 0
    worst = max(r[k] for part in gathered for r in part for k in r if k.startswith("rel_err"))
    for part in gathered:
        for r in part:
            print(json.dumps(r))
    ok = worst <= tolerance
    print(f"sharded vs reference over {len(gathered)} ranks: worst relative error {worst:.2e} "
          f"({'within' if ok else 'BEYOND'} {tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
