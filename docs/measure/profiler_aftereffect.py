"""Does a profile slow the launches timed after it in the same process?

Builds a few launch-bound items of the default matrix, times each three times, runs ``kernel_seconds``
(torch.profiler) on one of them, and times them all again. It does that in two fresh processes: with
Kineto's default (CUPTI stays attached after the profile) and with ``TEARDOWN_CUPTI=1``. mfbench takes
its kernel times last for this reason (``mfbench.instruments.timing``); this script is the A/B on one GPU.

    python docs/measure/profiler_aftereffect.py          # needs a CUDA device
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import torch

ITEMS = [("layer", "forward", 8192, "reference"), ("layer", "forward", 8192, "triton"),
         ("layer", "backward", 2048, "dense"), ("block", "forward", 2048, "triton")]


def measure() -> None:
    from mfbench.instruments.timing import kernel_seconds, time_callable
    from mfbench.core.model import ModelConfig
    from mfbench.bench.cases import Item
    from mfbench.bench.subject import prepare

    cfg, device = ModelConfig.preset("tiny"), torch.device("cuda")
    calls = []
    for benchmark, direction, seq, provider in ITEMS:
        item = Item(benchmark, direction, seq, provider, torch.float16, cfg=cfg)
        calls.append((item, prepare(item, device)))
    median = lambda fn: statistics.median(time_callable(fn, device).median_s for _ in range(3))  # noqa: E731
    before = [median(fn) for _, fn in calls]
    kernel_seconds(calls[0][1], device)  # one profile, as each item's measurement used to take
    after = [median(fn) for _, fn in calls]
    print(f"TEARDOWN_CUPTI={os.environ.get('TEARDOWN_CUPTI', '(unset)')}")
    for (item, _), b, a in zip(calls, before, after):
        print(f"  {item.label}  before {b * 1e3:.4g} ms  after {a * 1e3:.4g} ms  ({a / b:.2f}x)")


def main() -> int:
    if "--child" in sys.argv:
        measure()
        return 0
    if not torch.cuda.is_available():
        print("this needs a CUDA device", file=sys.stderr)
        return 2
    for teardown in (None, "1"):
        env = {k: v for k, v in os.environ.items() if k != "TEARDOWN_CUPTI"}
        env.update({"TEARDOWN_CUPTI": teardown} if teardown else {})
        code = subprocess.run([sys.executable, __file__, "--child"], env=env).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
