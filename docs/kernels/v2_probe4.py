"""The landed kernels at the issue-18 shapes (fp16, tau=8): forward and every backward strategy, each as a
do_bench median (warmup 50, rep 300; the issue's method) and as a CUDA-graph replay (GPU time only),
checked against the sorted strategy. python docs/kernels/v2_probe4.py OUT.json"""
import json
import sys

import torch
from triton.testing import do_bench

from mfbench.kernels import lookup as K
from mfbench.core.lookup import LookupSpec

SHAPES = [(2048, 2048), (8192, 2048), (32768, 2048), (32768, 512), (2048, 512), (8192, 512)]
out_path = sys.argv[1]
rows = []


def graph_ms(fn, calls=20, replays=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / calls)
    return sorted(ts)[len(ts) // 2]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def record(**kw):
    rows.append(kw)
    print(json.dumps(kw), flush=True)
    json.dump(rows, open(out_path, "w"), indent=1)


spec = LookupSpec()
for s, d in SHAPES:
    torch.manual_seed(0)
    x = torch.randn(s, d, device="cuda", dtype=torch.float16)
    t = (0.02 * torch.randn(d // 8, 256, d, device="cuda")).half()
    gy = torch.randn(s, d, device="cuda", dtype=torch.float16)
    case = f"s={s} d=h={d}"
    fwd = lambda: K.lookup_forward(x, t, spec)
    fwd()
    record(case=case, what="forward", ms=do_bench(fwd, warmup=50, rep=300, return_mode="median"),
           graph_ms=graph_ms(fwd), cfg=K.last_config("forward"))
    ref = K.lookup_backward(x, t, gy, spec, strategy="sorted")
    for strategy in K.BACKWARD_STRATEGIES:
        if d > 1024 and strategy != "sorted" and s > 8192:
            continue  # the by-token pass's atomics at h = 2048: 2-3x the sorted pass (probe 1), and slow
        bwd = lambda: K.lookup_backward(x, t, gy, spec, strategy=strategy)
        gx, gt = bwd()
        record(case=case, what=f"backward {strategy}", chosen=strategy == K.backward_strategy(s, d, 256),
               ms=do_bench(bwd, warmup=50, rep=300, return_mode="median"), graph_ms=graph_ms(bwd),
               err_gx=rel(gx, ref[0]), err_gt=rel(gt, ref[1]))
    xr, tr = x.detach().requires_grad_(), t.detach().requires_grad_()
    y = K.memory_lookup(xr, tr, spec)
    record(case=case, what="backward autograd (chosen)",
           ms=do_bench(lambda: torch.autograd.grad(y, (xr, tr), gy, retain_graph=True), warmup=50, rep=300,
                       return_mode="median"))

print("\ncase             what                         do_bench ms  graph ms  chosen")
for r in rows:
    print(f"{r['case']:16} {r['what']:28} {r['ms']:10.4f}  {r.get('graph_ms', float('nan')):8.4f}  {r.get('chosen', '')}")
