"""The landed kernels at the issue-18 shapes (fp16, tau=8): forward and every backward strategy, each as a
do_bench median (warmup 50, rep 300; the issue's method) and as a CUDA-graph replay (GPU time only),
checked against the sorted strategy. python docs/kernels/v2_probe4.py OUT.json"""
import sys

import torch

from mfbench.kernels import lookup as K
from mfbench.kernels import lookup_grad as KG
from mfbench.core.lookup import LookupSpec
from probe_common import inputs, Record, bench, graph_ms, rel

SHAPES = [(2048, 2048), (8192, 2048), (32768, 2048), (32768, 512), (2048, 512), (8192, 512)]
out_path = sys.argv[1]
record = Record(out_path)
rows = record.rows


spec = LookupSpec()
for s, d in SHAPES:
    x, t, gy = inputs(s, d)
    case = f"s={s} d=h={d}"
    fwd = lambda: K.lookup_forward(x, t, spec)
    fwd()
    record(case=case, what="forward", ms=bench(fwd),
           graph_ms=graph_ms(fwd), cfg=KG.last_config("forward"))
    ref = KG.lookup_backward(x, t, gy, spec, strategy="sorted")
    for strategy in KG.BACKWARD_STRATEGIES:
        if d > 1024 and strategy != "sorted" and s > 8192:
            continue  # the by-token pass's atomics at h = 2048: 2-3x the sorted pass (probe 1), and slow
        bwd = lambda: KG.lookup_backward(x, t, gy, spec, strategy=strategy)
        gx, gt = bwd()
        record(case=case, what=f"backward {strategy}", chosen=strategy == KG.backward_strategy(s, d, 256),
               ms=bench(bwd), graph_ms=graph_ms(bwd),
               err_gx=rel(gx, ref[0]), err_gt=rel(gt, ref[1]))
    xr, tr = x.detach().requires_grad_(), t.detach().requires_grad_()
    y = KG.memory_lookup(xr, tr, spec)
    record(case=case, what="backward autograd (chosen)",
           ms=bench(lambda: torch.autograd.grad(y, (xr, tr), gy, retain_graph=True)))

print("\ncase             what                         do_bench ms  graph ms  chosen")
for r in rows:
    print(f"{r['case']:16} {r['what']:28} {r['ms']:10.4f}  {r.get('graph_ms', float('nan')):8.4f}  {r.get('chosen', '')}")
