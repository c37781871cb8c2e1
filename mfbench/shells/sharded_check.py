"""The ``sharded`` provider checked against the whole layer, under torchrun on every rank:

    torchrun --nproc-per-node N -m mfbench.shells.sharded_check   (MFBENCH_DEVICE=cpu: on the CPU)
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from mfbench.config import settings, triton_cache_env
from mfbench.core.model import MemoryLayer
from mfbench.core.sharded import shard_tables
from mfbench.bench import ranks as distributed


def check(tokens: int = 256, in_features: int = 512, out_features: int = 384, tau: int = 8,
          dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> dict:
    """Under a process group: the sharded layer (tables split with ``shard_tables``) against the whole layer
    through ``reference`` on every rank: output, input gradient and this rank's tables gradient, as
    relative errors. Every rank builds the same layer and input from the same seed."""
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
    """``torchrun --nproc-per-node N -m mfbench.shells.sharded_check``: check the sharded provider against reference."""
    os.environ.update(triton_cache_env())  # the entry point chooses the process's Triton cache
    try:
        device = distributed.init("cuda" if torch.cuda.is_available() and settings().device != "cpu" else "cpu")
    except distributed.LaunchError as exc:
        print(f"mfbench.shells.sharded_check: error: {exc}", file=sys.stderr)
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
