"""What the probe scripts share: timing, the error measure and the JSON record."""
import json
import statistics
import time

import torch
from triton.testing import do_bench

from mfbench.instruments.timing import graph_samples


def bench(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def graph_ms(fn, calls=20, replays=20):
    """Median ms per call of ``calls`` calls captured in one CUDA graph (the suite's own graph timing).
    The committed probe outputs came from an inline copy of the same capture-and-replay loop."""
    return statistics.median(graph_samples(fn, "cuda", calls=calls, replays=replays)) * 1e3


def inputs(s, d):
    """x, tables (0.02 randn, as the released code initialises them) and dL/dy at tokens s, d = h, fp16."""
    torch.manual_seed(0)
    x = torch.randn(s, d, device="cuda", dtype=torch.float16)
    t = (0.02 * torch.randn(d // 8, 256, d, device="cuda")).half()
    gy = torch.randn(s, d, device="cuda", dtype=torch.float16)
    return x, t, gy


def print_best(rows, fields=("cfg", "err")):
    """The fastest row of each (case, what), by ms or else µs."""
    for case in dict.fromkeys(r.get("case") for r in rows):
        for what in dict.fromkeys(r["what"] for r in rows if r.get("case") == case):
            c = [r for r in rows if r.get("case") == case and r["what"] == what and ("ms" in r or "us" in r)]
            if c:
                b = min(c, key=lambda r: r.get("ms", r.get("us")))
                extra = " ".join(str(b.get(f, "")) for f in fields)
                print(f"{str(case):16} {what:26} {b.get('ms', b.get('us')):.4f} {extra}")


def host_us(fn, n=300):
    """Host µs to issue one call (no synchronisation between calls)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


class Record:
    """Appends a dict per measurement, printed and rewritten to ``path`` at once (a cut run keeps them)."""

    def __init__(self, path):
        self.path, self.rows = path, []

    def __call__(self, **kw):
        self.rows.append(kw)
        print(json.dumps(kw), flush=True)
        with open(self.path, "w") as f:
            json.dump(self.rows, f, indent=1)
