"""How the alert's rounds were chosen: record the timed call's speed on this machine, then replay that
record through the alert's rules with and without a planted 20% slowdown.

    python docs/ci/alert_replay.py record 400 > trace.txt   # TRITON_INTERPRET=1 OMP_NUM_THREADS=1
    python docs/ci/alert_replay.py replay trace.txt [trace2.txt ...]

A replayed alert takes blocks of consecutive calls from the record, a gap of asv start-up apart, and
gives them to base and head in the alert's order (base, head, head, base, ...); head's blocks are
multiplied by the planted factor. The order, the paired ratio and the stopping rule are the alert's own
(``asvrun.round_order``, ``paired_log_ratio``, ``unsettled``) and the verdict is asv's
(``_is_result_better``: median ratio over the threshold and asv's Mann-Whitney test).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

from mfbench import asvrun

CALL_S, GAP_S = 0.125, 5.7  # one Triton-interpreter call, one asv run's start-up (measured here)


def record(seconds: float) -> None:
    """Process CPU time of the alert test's call (micro Memory Layer, 64 tokens, Triton interpreter)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from mfbench.model import MemoryLayer, ModelConfig

    cfg = ModelConfig.preset("micro")
    layer = MemoryLayer(cfg.d_model, cfg.d_model, cfg.tau, cfg.temperature, cfg.weighting, provider="triton")
    x = torch.randn(64, cfg.d_model)
    with torch.no_grad():
        layer(x)
        end = time.time() + seconds
        while time.time() < end:
            t0, w0 = time.process_time(), time.perf_counter()
            layer(x)
            print(f"{w0:.3f} {time.process_time() - t0:.5f}", flush=True)


def replay_one(calls: np.ndarray, rng, block: int, rounds: int, max_rounds: int, slow: float,
               factor: float = 1.1) -> tuple[bool, int]:
    from asv.commands.compare import _is_result_better
    from asv_runner.statistics import compute_stats

    stride = block + round(GAP_S / CALL_S)
    start = rng.integers(0, len(calls) - stride * 2 * max_rounds)
    blocks = [calls[start + i * stride: start + i * stride + block] for i in range(2 * max_rounds)]
    base, head, paired = [], [], []
    for r in range(max_rounds):
        run = dict(zip(asvrun.round_order(r, "base", "head"), blocks[2 * r: 2 * r + 2]))
        run["head"] = run["head"] * slow
        base += list(run["base"])
        head += list(run["head"])
        paired.append(asvrun.paired_log_ratio(list(run["base"]), list(run["head"])))
        if r + 1 >= rounds and not asvrun.unsettled(paired, factor):
            break
    (value_b, stats_b), (value_h, stats_h) = compute_stats(base, 1), compute_stats(head, 1)
    regressed = _is_result_better(value_b, value_h, (stats_b, base), (stats_h, head), factor)
    return regressed, len(paired)


def replay(paths: list[str], trials: int = 1000) -> None:
    calls = np.concatenate([np.loadtxt(p)[:, 1] for p in paths])
    print(f"{len(calls)} calls; median {np.median(calls):.4f} s, p10-p90 {np.percentile(calls, 10):.4f}-"
          f"{np.percentile(calls, 90):.4f} s")
    for block, rounds, max_rounds in [(10, 2, 2), (20, 2, 2), (10, 6, 6), (20, 2, 8)]:
        rng = np.random.default_rng(0)
        planted = [replay_one(calls, rng, block, rounds, max_rounds, 1.2) for _ in range(trials)]
        same = [replay_one(calls, rng, block, rounds, max_rounds, 1.0) for _ in range(trials)]
        mean_rounds = statistics.fmean(r for _, r in planted + same)
        print(f"{block} calls a run, {rounds}-{max_rounds} rounds: caught {sum(c for c, _ in planted)}/{trials} "
              f"planted, {sum(c for c, _ in same)}/{trials} false alarms, {mean_rounds:.1f} rounds "
              f"(~{2 * mean_rounds * (GAP_S + block * CALL_S):.0f} s an alert)")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("record", "replay"):
        sys.exit(__doc__)
    record(float(sys.argv[2])) if sys.argv[1] == "record" else replay(sys.argv[2:])
