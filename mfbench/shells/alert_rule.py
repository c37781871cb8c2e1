"""The kernel alert's rule: how a parameter set's paired base/head rounds become a verdict (see
``mfbench.shells.alert`` for the whole procedure)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    factor: float = 1.1
    z: float = 3.0
    min_se: float = 0.01  # a floor on the standard error: two rounds that happen to agree prove little
    min_rounds: int = 2
    max_rounds: int = 6


@dataclass(frozen=True)
class Judgement:
    verdict: str  # regressed, same, improved
    settled: bool
    ratio: float
    low: float
    high: float


def judge(log_ratios: list[float], rule: Rule) -> Judgement:
    """The verdict on one set from its paired log-ratios (head over base), by ``rule``."""
    n = len(log_ratios)
    mean, threshold = statistics.fmean(log_ratios), math.log(rule.factor)
    if n < 2:  # one round has no spread to judge it by
        return Judgement("regressed" if mean > threshold else "same", False, *[math.exp(mean)] * 3)
    se = max(statistics.stdev(log_ratios) / math.sqrt(n), rule.min_se)
    low, high = mean - rule.z * se, mean + rule.z * se
    if low > threshold:
        verdict, settled = "regressed", True
    elif high < -threshold:
        verdict, settled = "improved", True
    elif high < threshold:
        verdict, settled = "same", True
    else:
        verdict, settled = ("regressed" if mean > threshold else "same"), False
    return Judgement(verdict, settled, math.exp(mean), math.exp(low), math.exp(high))


def paired_log_ratio(base: list[float], head: list[float]) -> float:
    return math.log(statistics.median(head) / statistics.median(base))


# --- git -----------------------------------------------------------------------------------------


@dataclass
class SetRecord:
    """What the rounds gave one parameter set: per commit, per round, (status, reason, method, samples)."""

    provider: str
    direction: str
    seq: int
    dtype: str = ""
    base: list[dict] = field(default_factory=list)
    head: list[dict] = field(default_factory=list)
    log_ratios: list[float] = field(default_factory=list)


def outcome(rec: SetRecord, rule: Rule) -> tuple[str, str, Judgement | None]:
    """(verdict, reason, judgement) for a set: judged from its ratios, or broken, unavailable, new, failed."""
    base = {r["status"] for r in rec.base}
    head = {r["status"] for r in rec.head}
    bad_head = [r for r in rec.head if r["status"] != "ok"]
    if base == {"unavailable"} and head == {"unavailable"}:
        return "unavailable", rec.head[-1]["reason"], None
    if bad_head and "ok" in base:
        return "broken", f"ran at base, {bad_head[-1]['status']} at head: {bad_head[-1]['reason']}", None
    if base != {"ok"}:
        reason = next(r["reason"] for r in rec.base if r["status"] != "ok")
        return ("failed-at-both" if bad_head else "new-at-head"), f"base: {reason}", None
    methods = {r["method"] for r in rec.base} | {r["method"] for r in rec.head}
    if len(methods) > 1:
        return "broken", f"measured differently at base and head ({', '.join(sorted(methods))})", None
    judgement = judge(rec.log_ratios, rule)
    return judgement.verdict, "" if judgement.settled else "unsettled at the last round: judged by the mean", judgement


def still_open(verdicts: dict[str, tuple[str, str, Judgement | None]], done: int, rule: Rule) -> list[str]:
    """The sets to measure in the next round (none: stop). Before ``min_rounds`` every set goes on; after
    it, nothing does once the answer is 'fail' whatever the open sets do (a broken set, a settled
    regression), else the unsettled ones."""
    if done < rule.min_rounds:
        return list(verdicts)
    if done >= rule.max_rounds or any(v == "broken" or (j is not None and j.verdict == "regressed" and j.settled)
                                      for v, _, j in verdicts.values()):
        return []
    return [k for k, (_, _, j) in verdicts.items() if j is not None and not j.settled]


def overall(rows: list[dict], accuracy_code: int) -> str:
    """The alert's one answer from every set's verdict and the accuracy check's exit code."""
    verdicts = {r["verdict"] for r in rows}
    if "broken" in verdicts:
        return "broken"
    if "regressed" in verdicts:
        return "regression"
    if accuracy_code:
        return "accuracy"
    if not verdicts & {"same", "improved"}:
        return "unmeasured"
    return "pass"
