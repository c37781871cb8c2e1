"""Times the v1 and candidate v2 lookup kernels at the issue-18 shapes on one GPU (fp16, tau=8).

python docs/kernels/v2_probe.py OUT.json   -- prints a table last; every figure is a do_bench median (ms,
warmup 50, rep 300, as the issue's table) and, for the best, a CUDA-graph replay per call (GPU time only).
"""
import sys
import time

import torch
import triton

from mfbench.kernels import lookup as v1
from mfbench.kernels import lookup_grad as v1g
import v2_prototypes as v2
from mfbench.core.lookup import LookupSpec
from probe_common import inputs, Record, bench, graph_ms, rel

SHAPES = [(2048, 2048), (8192, 2048), (32768, 2048), (32768, 512), (2048, 512)]
FWD = [(256, 32, 8), (512, 16, 8), (512, 32, 8), (1024, 16, 8), (256, 16, 4), (128, 32, 4), (256, 64, 8)]
BWD = [(32, 128, 4), (64, 64, 4), (16, 256, 4), (32, 256, 8), (64, 128, 8), (128, 64, 8)]
out_path = sys.argv[1]
record = Record(out_path)
rows = record.rows


@triton.jit
def _empty_kernel(x_ptr):
    pass


dummy = torch.zeros(1, device="cuda")
record(what="empty triton launch", ms=bench(lambda: _empty_kernel[(1,)](dummy)))
spec = LookupSpec()
for s, d in SHAPES:
    x, t, gy = inputs(s, d)
    case = f"s={s} d=h={d}"
    t0 = time.time()
    ref = v1.lookup_forward(x, t, spec)
    record(case=case, what="v1 fwd", ms=bench(lambda: v1.lookup_forward(x, t, spec)), cfg=v1g.last_config("forward"))
    record(case=case, what="hash only", ms=bench(lambda: v1.hash_and_weight(x, spec)))
    best = None
    for bs, bh, w in FWD:
        try:
            y = v2.forward_slice(x, t, spec, bs, bh, w)
            err = rel(y, ref)
            ms = bench(lambda: v2.forward_slice(x, t, spec, bs, bh, w))
        except Exception as e:  # a config that does not fit (shared memory, registers)
            record(case=case, what="v2 fwd slice", cfg=[bs, bh, w], error=str(e).splitlines()[0][:200])
            continue
        record(case=case, what="v2 fwd slice", cfg=[bs, bh, w], ms=ms, err_vs_v1=err)
        if best is None or ms < best[0]:
            best = (ms, (bs, bh, w))
    if best:
        bs, bh, w = best[1]
        record(case=case, what="v2 fwd slice best graph", cfg=best[1],
               ms=graph_ms(lambda: v2.forward_slice(x, t, spec, bs, bh, w)))
    record(case=case, what="v1 fwd graph", ms=graph_ms(lambda: v1.lookup_forward(x, t, spec)))
    rgx, rgt = v1g.lookup_backward(x, t, gy, spec)
    record(case=case, what="v1 bwd", ms=bench(lambda: v1g.lookup_backward(x, t, gy, spec)), cfg=v1g.last_config("backward"))
    xr = x.detach().requires_grad_(True)
    tr = t.detach().requires_grad_(True)
    yv = v1g.memory_lookup(xr, tr, spec)
    record(case=case, what="v1 bwd autograd", ms=bench(lambda: torch.autograd.grad(yv, (xr, tr), gy, retain_graph=True)))
    best = None
    for bs, bh, w in BWD:
        try:
            gx, gt = v2.backward_atomic(x, t, gy, spec, bs, bh, w)
            e1, e2 = rel(gx, rgx), rel(gt, rgt)
            ms = bench(lambda: v2.backward_atomic(x, t, gy, spec, bs, bh, w))
        except Exception as e:
            record(case=case, what="v2 bwd atomic", cfg=[bs, bh, w], error=str(e).splitlines()[0][:200])
            continue
        record(case=case, what="v2 bwd atomic", cfg=[bs, bh, w], ms=ms, err_gx=e1, err_gt=e2)
        if best is None or ms < best[0]:
            best = (ms, (bs, bh, w))
    if best:
        bs, bh, w = best[1]
        record(case=case, what="v2 bwd atomic best graph", cfg=best[1],
               ms=graph_ms(lambda: v2.backward_atomic(x, t, gy, spec, bs, bh, w)))
    record(case=case, what="v1 bwd graph", ms=graph_ms(lambda: v1g.lookup_backward(x, t, gy, spec)))
    record(case=case, what="case seconds", s=time.time() - t0)

print("\nSUMMARY")
for r in rows:
    if "ms" in r and ("best" in r["what"] or r["what"].startswith("v1") or "empty" in r["what"] or "hash" in r["what"]):
        print(f"{r.get('case',''):18} {r['what']:28} {r['ms']:.4f} {r.get('cfg','')}")
for case in dict.fromkeys(r.get("case") for r in rows if r.get("case")):
    for what in ("v2 fwd slice", "v2 bwd atomic"):
        c = [r for r in rows if r.get("case") == case and r["what"] == what and "ms" in r]
        if c:
            b = min(c, key=lambda r: r["ms"])
            print(f"{case:18} best {what:20} {b['ms']:.4f} {b['cfg']} errs {b.get('err_vs_v1', b.get('err_gx'))} {b.get('err_gt','')}")
