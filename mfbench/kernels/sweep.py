"""Time every launch configuration of the lookup kernels at one shape (for kernel authors).

    python -m mfbench.kernels.sweep --tokens 2048 --in-features 2048 --out-features 2048

Prints one line per configuration, fastest first, so the autotuner's choice can be checked by eye; the
forward's two kernels (gather, and decode for a few tokens) are both swept at any token count.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

from mfbench.kernels import lookup as K
from mfbench.kernels import lookup_grad as G
from mfbench.core.lookup import LookupSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.kernels.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--in-features", type=int, default=2048)
    parser.add_argument("--out-features", type=int, default=2048)
    parser.add_argument("--tau", type=int, default=8)
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--stages", action="store_true", help="also time each stage of the autotuned backward")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("a CUDA device is needed")
    dtype = getattr(torch, args.dtype)
    spec = LookupSpec(args.tau)
    x = torch.randn(args.tokens, args.in_features, device="cuda", dtype=dtype)
    tables = torch.randn(args.in_features // args.tau, spec.rows, args.out_features, device="cuda", dtype=dtype)
    gy = torch.randn(args.tokens, args.out_features, device="cuda", dtype=dtype)
    rows = []
    sets = (("forward", K.FORWARD_CONFIGS), ("decode", K.DECODE_CONFIGS), ("backward", G.BACKWARD_CONFIGS))
    for direction, configs in sets:
        for cfg in configs:
            config = {**cfg.kwargs, "num_warps": cfg.num_warps}
            if cfg.num_stages is not None:
                config["num_stages"] = cfg.num_stages
            if direction == "backward" and not G.backward_config_fits(cfg, args.out_features):
                continue
            if direction in ("forward", "decode"):  # the configuration's parameters name its kernel
                fn = lambda c=config: K.lookup_forward(x, tables, spec, dict(c))
            else:
                fn = lambda c=config: G.lookup_backward(x, tables, gy, spec, config=dict(c))
            try:
                ms = triton.testing.do_bench(fn, return_mode="median")
            except Exception as exc:  # a config the compiler rejects is reported, not fatal
                rows.append((direction, float("inf"), f"{config} failed: {type(exc).__name__}"))
                continue
            rows.append((direction, ms, str(config)))
    for direction, ms, text in sorted(rows):
        print(f"{direction:<8} {ms:9.4f} ms  {text}")
    if args.stages:
        for name, ms in stage_times(x, tables, gy, spec).items():
            print(f"stage    {ms:9.4f} ms  {name}")
    return 0


def stage_times(x: torch.Tensor, tables: torch.Tensor, gy: torch.Tensor, spec: LookupSpec) -> dict[str, float]:
    """Median time of each step of the backward, each run on its own."""
    k, rows, h = tables.shape
    idx, p = K.hash_and_weight(x, spec)
    keys = (idx + torch.arange(k, device=x.device, dtype=torch.int32)[:, None] * rows).flatten()
    sorted_keys = torch.sort(keys, stable=True).values
    bounds = torch.arange(k * rows + 1, device=x.device, dtype=torch.int32)
    bench = lambda fn: triton.testing.do_bench(fn, return_mode="median")
    out = {
        "hash_and_weight (x -> idx, p)": bench(lambda: K.hash_and_weight(x, spec)),
        "torch.sort of the (table, row) keys": bench(lambda: torch.sort(keys, stable=True)),
        "searchsorted row offsets": bench(lambda: torch.searchsorted(sorted_keys, bounds, out_int32=True)),
        "forward, autotuned": bench(lambda: K.lookup_forward(x, tables, spec)),
        "backward, autotuned, both gradients": bench(lambda: G.lookup_backward(x, tables, gy, spec)),
        "backward, table gradient only": bench(lambda: G.lookup_backward(x, tables, gy, spec, need_x=False)),
        "backward, input gradient only": bench(lambda: G.lookup_backward(x, tables, gy, spec, need_tables=False)),
    }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
