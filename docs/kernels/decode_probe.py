"""Decode probe: the lookup's forward at a few tokens per call against the dense layer, on one GPU.

    python docs/kernels/decode_probe.py OUT_DIR [--widths 1024,2048,4096,8192] [--batches 1,2,4,8,16,32,64]
    python docs/kernels/decode_probe.py OUT_DIR --ncu WIDTH,TOKENS   (one decode call, for ncu)

fp16, tau = 8, d = h. Per (d, B): dense (x @ W), the gather kernel (hash pass + gather) and the decode kernel
(one launch), each as CUDA-graph replay of 20 calls (the suite's graph_samples) in two ways:
- ``same``: every call on the same x (and W), the issue's method; what a call reads stays in L2 when it fits;
- ``rotating``: 20 calls over 20 different x (and, for dense, 20 different W), so each call reads what the
  previous ones did not, as consecutive layers of a decoding step do.
The floor is the fewest bytes (B x K rows of h, x, y; dense: W, x, y) over the suite's copy ceiling
(``instruments.ceilings``). Every figure is also checked against a float64 reference. Rows go to OUT_DIR/decode.json
as they are measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mfbench.core.lookup import LookupSpec, reference_lookup
from mfbench.instruments.ceilings import ceilings
from mfbench.instruments.timing import graph_samples
from mfbench.kernels import lookup as kernels

CALLS = 20


def graph_us(calls) -> float:
    """Median µs per call over replays of one graph of len(calls) calls (calls: zero-argument functions)."""
    it = iter(range(10**9))
    def one():
        calls[next(it) % len(calls)]()
    return statistics.median(graph_samples(one, "cuda", calls=len(calls), replays=25, budget_s=0.4)) * 1e6


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def probe(widths, batches, out: Path) -> None:
    spec = LookupSpec(8)
    bandwidth = ceilings("cuda").copy_bytes_per_s  # the suite's own copy ceiling, cached per device
    rows = [dict(what="copy_bandwidth", bytes_per_s=bandwidth, device=torch.cuda.get_device_name())]
    for d in widths:
        torch.manual_seed(d)
        tables = (0.02 * torch.randn(d // 8, 256, d, device="cuda")).half()
        weights = [torch.randn(d, d, device="cuda", dtype=torch.float16) / d**0.5 for _ in range(CALLS)]
        for b in batches:
            xs = [torch.randn(b, d, device="cuda", dtype=torch.float16) for _ in range(CALLS)]
            ref = reference_lookup(xs[0].double(), tables.double(), spec)
            k = d // 8
            lookup_bytes = (min(b * k, k * 256) * d + 2 * b * d) * 2
            dense_bytes = (d * d + 2 * b * d) * 2
            for name in ("dense",) + kernels.FORWARD_KERNELS:
                if name == "dense":
                    err = rel(F.linear(xs[0], weights[0]), F.linear(xs[0].double(), weights[0].double()))
                    same = [lambda: F.linear(xs[0], weights[0])] * CALLS
                    rotating = [lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, weights)]
                    floor = dense_bytes / bandwidth
                else:
                    err = rel(kernels.lookup_forward(xs[0], tables, spec, kernel=name), ref)
                    same = [lambda name=name: kernels.lookup_forward(xs[0], tables, spec, kernel=name)] * CALLS
                    rotating = [lambda x=x, name=name: kernels.lookup_forward(x, tables, spec, kernel=name) for x in xs]
                    floor = lookup_bytes / bandwidth
                row = dict(what=name, d=d, tokens=b, same_us=graph_us(same), rotating_us=graph_us(rotating),
                           floor_us=floor * 1e6, bytes=dense_bytes if name == "dense" else lookup_bytes,
                           rel_err=err)
                if name != "dense":
                    tuner = kernels.DECODE_TUNER if name == "decode" else kernels.FORWARD_TUNER
                    cfg = getattr(tuner, "best_config", None)
                    row["config"] = None if cfg is None else f"{cfg.kwargs} warps={cfg.num_warps}"
                rows.append(row)
                print(json.dumps(row), flush=True)
                (out / "decode.json").write_text(json.dumps(rows, indent=1))
        del tables, weights
        torch.cuda.empty_cache()
    print(f"\n{'d':>5} {'B':>3} | {'dense same/rot':>15} | {'gather same/rot':>16} | {'decode same/rot':>16} | floor lookup/dense")
    for d in widths:
        for b in batches:
            r = {x["what"]: x for x in rows if x.get("d") == d and x.get("tokens") == b}
            cells = [f"{r[n]['same_us']:7.1f}/{r[n]['rotating_us']:7.1f}" for n in ("dense", "gather", "decode")]
            print(f"{d:5} {b:3} | {cells[0]:>15} | {cells[1]:>16} | {cells[2]:>16} | "
                  f"{r['decode']['floor_us']:.1f}/{r['dense']['floor_us']:.1f}")


def ncu_call(d: int, b: int) -> None:
    """Warm the decode kernel (its tuning is cached on disk by the probe run), then the call ncu profiles."""
    spec = LookupSpec(8)
    tables = (0.02 * torch.randn(d // 8, 256, d, device="cuda")).half()
    x = torch.randn(b, d, device="cuda", dtype=torch.float16)
    for _ in range(3):
        kernels.lookup_forward(x, tables, spec, kernel="decode")
    torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--widths", default="1024,2048,4096,8192")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--ncu")
    args = parser.parse_args(argv)
    if args.ncu:
        ncu_call(*map(int, args.ncu.split(",")))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    probe([int(v) for v in args.widths.split(",")], [int(v) for v in args.batches.split(",")], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
