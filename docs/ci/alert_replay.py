"""Replay recorded kernel-probe processes through the alert's own decision, many times over.

    python docs/ci/alert_replay.py results/alert/h200-trace.json [--trials 1000]

A replayed alert draws distinct recorded processes of the base build and of the head build, one of each
per round and set (a set draws from the processes that measured it: later rounds measure only open sets), forms each round's paired log-ratio per set exactly as ``mfbench.shells.alert`` does, and applies the
alert's judgement (``alert_rule.judge``) and stopping rule (``alert_rule.still_open``). It is caught when any set
ends regressed. Besides the recorded builds (planted 20%, planted 5%, comment-only), a synthetic head
multiplies a base process's samples by a known factor: the detection rate against the true slowdown.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from mfbench.shells import alert_rule as alert  # the rule: Rule, judge, paired_log_ratio, still_open


def replay_one(base: list[dict], head: list[dict], rng: random.Random, rule: alert.Rule,
               scale: float = 1.0) -> tuple[bool, int, bool]:
    """(caught, rounds, some set reads slower) of one alert replayed from the recorded processes ``base``
    and ``head``."""
    keys = sorted({k for p in base for k in p["sets"]} & {k for p in head for k in p["sets"]})
    draws_b, draws_h = {}, {}
    for k in keys:  # later rounds measure only the open sets: each set draws from the processes that have it
        pool_b, pool_h = [p["sets"][k] for p in base if k in p["sets"]], [p["sets"][k] for p in head if k in p["sets"]]
        if head is base:  # a synthetic head: never a process paired with itself
            draws = rng.sample(pool_b, 2 * rule.max_rounds)
            draws_b[k], draws_h[k] = draws[:rule.max_rounds], draws[rule.max_rounds:]
        else:  # a pool smaller than max_rounds (sets that settled early) repeats a process only past its size
            draws_b[k], draws_h[k] = (rng.sample(pool, len(pool)) * rule.max_rounds for pool in (pool_b, pool_h))
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    wanted, done = keys, 0
    for r in range(rule.max_rounds):
        for k in wanted:
            ratios[k].append(alert.paired_log_ratio(draws_b[k][r], [x * scale for x in draws_h[k][r]]))
        done = r + 1
        verdicts = {k: ("", "", alert.judge(ratios[k], rule)) for k in wanted}
        wanted = alert.still_open(verdicts, done, rule)
        if not wanted:
            break
    words = {alert.judge(v, rule).verdict for v in ratios.values()}
    return "regressed" in words, done, "slower" in words


def rate(base: list[dict], head: list[dict], trials: int, rule: alert.Rule, scale: float = 1.0,
         seed: int = 0) -> tuple[int, float, int]:
    """(alerts caught, mean rounds, alerts in which some set reads "slower, below the threshold")."""
    rng = random.Random(seed)
    runs = [replay_one(base, head, rng, rule, scale) for _ in range(trials)]
    return sum(c for c, _, _ in runs), sum(r for _, r, _ in runs) / trials, sum(s for _, _, s in runs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace", type=Path)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    trace = json.loads(args.trace.read_text())
    pools: dict[str, list[dict]] = {}
    for process in trace["processes"]:
        pools.setdefault(process["build"], []).append(process)
    print(f"{args.trace}: {trace['device']}, torch {trace['torch']}, triton {trace['triton']}; processes: "
          + ", ".join(f"{b} {len(p)}" for b, p in pools.items()))
    n = args.trials
    for factor in (1.1, 1.05):
        rule = alert.Rule(factor=factor)
        print(f"\nthreshold x{factor:g} (z {rule.z:g}, SE floor {rule.min_se:g}, {rule.min_rounds}-{rule.max_rounds} rounds)")
        for head in ("planted", "planted5", "unchanged", "base"):
            caught, rounds, slower = rate(pools["base"], pools[head], n, rule)
            kind = "false alarms" if head in ("unchanged", "base") else "caught"
            print(f"  head {head:<9}: {kind} {caught}/{n}, mean {rounds:.2f} rounds; a set reads slower in {slower}/{n}")
        for slowdown in (0.02, 0.05, 0.08, 0.10, 0.12, 0.15, 0.20):
            caught, rounds, slower = rate(pools["base"], pools["base"], n, rule, 1 + slowdown)
            print(f"  base x{1 + slowdown:.2f} on every set: caught {caught}/{n}, mean {rounds:.2f} rounds; "
                  f"a set reads slower in {slower}/{n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
