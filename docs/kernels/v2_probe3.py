"""Third probe: atomic backward with several tables per program, the sorted backward's wide configs,
direct launches of a compiled kernel, and sort key width."""
import sys

import torch
import triton

from mfbench.kernels import lookup as v1
from mfbench.kernels import lookup_grad as v1g
import v2_prototypes as v2
from mfbench.core.lookup import LookupSpec
from probe_common import print_best, inputs, Record, bench, graph_ms, host_us, rel

out_path = sys.argv[1]
record = Record(out_path)
rows = record.rows


spec = LookupSpec()
for s, d in [(32768, 512), (2048, 512), (2048, 2048)]:
    x, t, gy = inputs(s, d)
    case = f"s={s} d=h={d}"
    rgx, rgt = v1g.lookup_backward(x, t, gy, spec)
    for kp in (1, 4, 16):
        for bs, bh, w in [(32, 128, 4), (64, 64, 4), (16, 256, 4), (64, 128, 8)]:
            for need_t in (True, False):
                if d == 2048 and need_t:
                    continue
                fn = lambda: v2.backward_atomic(x, t, gy, spec, bs, bh, w, need_t=need_t, k_per=kp)
                try:
                    gx, gt = fn()
                    record(case=case, what="atomic both" if need_t else "atomic x-only", cfg=[bs, bh, w, kp],
                           ms=bench(fn), err=rel(gx, rgx), err_t=rel(gt, rgt) if need_t else None)
                except Exception as e:
                    record(case=case, what="atomic", cfg=[bs, bh, w, kp], error=str(e).splitlines()[0][:160])
    for bt, bh, w in [(4, 1024, 4), (2, 1024, 4), (4, 512, 4), (2, 2048, 8), (4, 2048, 8), (2, 512, 4), (8, 1024, 4)]:
        for need_x in (True, False):
            fn = lambda: v1g.lookup_backward(x, t, gy, spec, need_x=need_x, config={"BLOCK_T": bt, "BLOCK_H": bh, "num_warps": w})
            try:
                gx, gt = fn()
                record(case=case, what="sorted both" if need_x else "sorted tables-only", cfg=[bt, bh, w], ms=bench(fn),
                       err_t=rel(gt, rgt), err=rel(gx, rgx) if need_x else None)
            except Exception as e:
                record(case=case, what="sorted", cfg=[bt, bh, w], error=str(e).splitlines()[0][:160])
    record(case=case, what="graph v1 fwd", ms=graph_ms(lambda: v1.lookup_forward(x, t, spec)))
    record(case=case, what="graph hash", ms=graph_ms(lambda: v1.hash_and_weight(x, spec)))
    idx, p = v1.hash_and_weight(x, spec)
    keys = (idx + torch.arange(d // 8, device=x.device, dtype=torch.int32)[:, None] * 256).flatten()
    record(case=case, what="graph sort int32", ms=graph_ms(lambda: torch.sort(keys, stable=True)))
    if d == 512:
        k16 = keys.to(torch.int16)
        record(case=case, what="graph sort int16", ms=graph_ms(lambda: torch.sort(k16, stable=True)))
    record(case=case, what="graph v1 bwd", ms=graph_ms(lambda: v1g.lookup_backward(x, t, gy, spec)))
    # Launch cost: the JIT path against the compiled kernel called directly (all arguments in order).
    idx = torch.empty(d // 8, s, device="cuda", dtype=torch.int32)
    pp = torch.empty(d // 8, s, device="cuda", dtype=torch.float32)
    a = v1.hash_args(x, spec)
    grid = (triton.cdiv(s, 128), d // 8)
    ck = v1._hash_kernel[grid](x, idx, pp, BLOCK_S=128, **a)
    allargs = [x, idx, pp, a["S"], a["stride_xs"], a["two_over_t"], a["TAU"], a["TAU_P2"], a["WEIGHTING"], 128]
    record(case=case, what="host us jit launch", us=host_us(lambda: v1._hash_kernel[grid](x, idx, pp, BLOCK_S=128, **a)))
    try:
        runner = ck[grid]
        runner(*allargs); torch.cuda.synchronize()
        ok = torch.equal(idx, v1.hash_and_weight(x, spec)[0])
        record(case=case, what="host us compiled launch", us=host_us(lambda: runner(*allargs)), same=ok)
    except Exception as e:
        record(case=case, what="compiled launch", error=repr(e)[:300])

print("\nSUMMARY")
print_best(rows, ("cfg", "err", "err_t", "same"))
