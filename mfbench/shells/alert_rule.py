"""The kernel alert's rule: how a parameter set's paired base/head rounds become a verdict, and how its
per-call counts compare (see ``mfbench.shells.alert`` for the whole procedure).

Verdicts on a time, from the interval mean +- z standard errors of the paired log-ratios (head over base):

- ``same``: the interval holds 1.0 and lies inside the no-change band (1/factor, factor);
- ``slower`` / ``faster``: the interval lies wholly above / below 1.0 but inside the band (certain, smaller
  than the factor: "below the threshold");
- ``regressed`` / ``improved``: the interval lies wholly above factor / below 1/factor;
- while the interval still spans factor or 1/factor, the set is open and runs again. After the last round
  it is judged by what is certain and by its mean, and says it is unsettled: an interval wholly above 1.0
  is ``regressed`` where its mean is above the factor, else ``slower`` (below the threshold by its mean);
  wholly below 1.0, ``improved`` or ``faster`` alike; an interval that holds 1.0 is ``unsettled``, and
  where its mean is above the factor the alert fails closed on it (the exit code follows the factor).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

# what each verdict word claims, for the reports
MEANING = {
    "same": "no certain change; any change is within the no-change band",
    "slower": "certainly slower, below the threshold",
    "faster": "certainly faster, below the threshold",
    "regressed": "slower than the threshold",
    "improved": "faster than the threshold",
    "unsettled": "the interval still holds 1.0 and spans the threshold after the last round",
}
COUNTS = ("kernels", "syncs", "bytes", "ops")  # per-call counts the probe records; a GPU run needs the first three
GPU_COUNTS = ("kernels", "syncs", "bytes")
COUNT_UNITS = {"kernels": "kernels", "syncs": "sync", "bytes": "bytes allocated", "ops": "torch ops"}


@dataclass(frozen=True)
class Rule:
    factor: float = 1.1
    z: float = 3.0
    min_se: float = 0.01  # a floor on the standard error: two rounds that happen to agree prove little
    min_rounds: int = 2
    max_rounds: int = 6
    fail_on: str = "regressed"  # or "slower": a certain slowdown below the factor fails too
    eager_factor: float = 1.25  # eager calls include the host, which moved more between processes
    counts: str = "fail"  # or "report": an increased per-call count is reported and does not fail


@dataclass(frozen=True)
class Judgement:
    verdict: str  # one of MEANING
    settled: bool
    ratio: float
    low: float
    high: float


def judge(log_ratios: list[float], rule: Rule, factor: float | None = None) -> Judgement:
    """The verdict on one set from its paired log-ratios (head over base), by ``rule`` (at ``factor``, the
    rule's unless given). An open set (not settled) is judged as if no round followed, as the module says."""
    n = len(log_ratios)
    mean, t = statistics.fmean(log_ratios), math.log(factor or rule.factor)
    if n < 2:  # one round has no spread to judge it by
        return Judgement("unsettled", False, *[math.exp(mean)] * 3)  # `overall` fails it above the factor
    se = max(statistics.stdev(log_ratios) / math.sqrt(n), rule.min_se)
    low, high = mean - rule.z * se, mean + rule.z * se
    bounds = math.exp(mean), math.exp(low), math.exp(high)
    if low > t:
        return Judgement("regressed", True, *bounds)
    if high < -t:
        return Judgement("improved", True, *bounds)
    if -t < low and high < t:  # inside the band
        return Judgement("slower" if low > 0 else "faster" if high < 0 else "same", True, *bounds)
    # still open: a word claims only what is certain (the side of 1.0), the mean says how far
    if low > 0:
        return Judgement("regressed" if mean > t else "slower", False, *bounds)
    if high < 0:
        return Judgement("improved" if mean < -t else "faster", False, *bounds)
    return Judgement("unsettled", False, *bounds)


def describe(j: Judgement, factor: float) -> str:
    """The reason beside a verdict word: what of it is certain."""
    if j.settled:
        return ""
    if j.low == j.high:
        return "one round: no spread, judged by its value"
    bound = factor if j.high > factor and j.low < factor else 1 / factor  # the threshold the interval spans
    side = "above" if j.ratio > bound else "below"
    return f"unsettled: the interval spans x{bound:.3g} after the last round; its mean is {side} it"


def paired_log_ratio(base: list[float], head: list[float]) -> float:
    return math.log(statistics.median(head) / statistics.median(base))


# --- per-call counts -----------------------------------------------------------------------------------


def count_increases(base: list[dict | None], head: list[dict | None]) -> dict[str, tuple[float, float]]:
    """{count: (base, head)} for each per-call count that is higher at head (the largest of each side's
    rounds: the counts are deterministic, so a difference between rounds is itself worth a look)."""
    out = {}
    for name in COUNTS:
        b = [c[name] for c in base if c and c.get(name) is not None]
        h = [c[name] for c in head if c and c.get(name) is not None]
        if b and h and max(h) > max(b):
            out[name] = (max(b), max(h))
    return out


def missing_counts(runs: list[dict | None], gpu: bool) -> list[str]:
    """The counts a run must have and lacks: on a GPU kernels, syncs and bytes (fail closed), none on a CPU."""
    if not gpu:
        return []
    measured = [c for c in runs if c]
    return [n for n in GPU_COUNTS if not measured or any(c.get(n) is None for c in measured)]


def count_text(increases: dict[str, tuple[float, float]]) -> str:
    """ "1 -> 5 kernels, 0 -> 1 sync" """
    fmt = lambda v: f"{v:.4g}" if v != int(v) else f"{int(v)}"
    return ", ".join(f"{fmt(b)} -> {fmt(h)} {COUNT_UNITS[n]}" for n, (b, h) in increases.items())


# --- a set's record -------------------------------------------------------------------------------------


@dataclass
class SetRecord:
    """What the rounds gave one parameter set: per commit, per round, (status, reason, method, samples,
    eager samples, counts)."""

    provider: str
    direction: str
    seq: int
    width: int | None = None  # d = h of a decode set; None: the preset's
    dtype: str = ""
    base: list[dict] = field(default_factory=list)
    head: list[dict] = field(default_factory=list)
    log_ratios: list[float] = field(default_factory=list)
    eager_log_ratios: list[float] = field(default_factory=list)


GPU_METHODS = ("cuda-graph-replay", "cupti-busy-time")


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
    gpu = methods <= set(GPU_METHODS)
    for side, runs in (("base", rec.base), ("head", rec.head)):
        lacking = missing_counts([r.get("counts") for r in runs], gpu)
        if lacking:
            why = next((r.get("counts_reason") for r in runs if r.get("counts_reason")), "") or "not recorded"
            return "broken", f"per-call {', '.join(lacking)} not measured at {side} ({why})", None
    judgement = judge(rec.log_ratios, rule)
    return judgement.verdict, describe(judgement, rule.factor), judgement


def eager_outcome(rec: SetRecord, rule: Rule) -> Judgement | None:
    """The eager call's judgement at the rule's eager factor, where both commits timed it every round."""
    if not rec.eager_log_ratios or len(rec.eager_log_ratios) != len(rec.log_ratios):
        return None
    return judge(rec.eager_log_ratios, rule, rule.eager_factor)


def fails(verdict: str, rule: Rule) -> bool:
    """Whether a set's time verdict fails the alert under ``rule``."""
    return verdict == "regressed" or (rule.fail_on == "slower" and verdict == "slower")


def still_open(verdicts: dict[str, tuple[str, str, Judgement | None]], done: int, rule: Rule) -> list[str]:
    """The sets to measure in the next round (none: stop). Before ``min_rounds`` every set goes on; after
    it, nothing does once the answer is 'fail' whatever the open sets do (a broken set, a settled
    failing verdict), else the unsettled ones."""
    if done < rule.min_rounds:
        return list(verdicts)
    if done >= rule.max_rounds or any(v == "broken" or (j is not None and j.settled and fails(v, rule))
                                      for v, _, j in verdicts.values()):
        return []
    return [k for k, (_, _, j) in verdicts.items() if j is not None and not j.settled]


def open_above(r: dict, rule: Rule) -> bool:
    """A set left unsettled with its mean above the factor: the alert fails closed on it."""
    return r["verdict"] == "unsettled" and (r.get("ratio") or 0) > rule.factor


def eager_regressed(r: dict) -> bool:
    eager = r.get("eager") or {}
    return eager.get("verdict") == "regressed" and bool(eager.get("settled"))


def set_fails(r: dict, rule: Rule) -> bool:
    """Whether this set's row alone fails the alert under ``rule`` (each of ``overall``'s failing answers)."""
    return (r["verdict"] == "broken" or fails(r["verdict"], rule) or open_above(r, rule) or eager_regressed(r)
            or rule.counts == "fail" and bool(r.get("count_increases")))


def overall(rows: list[dict], accuracy_code: int, rule: Rule = Rule()) -> str:
    """The alert's one answer from every set's verdicts and counts and the accuracy check's exit code."""
    verdicts = {r["verdict"] for r in rows}
    if "broken" in verdicts:
        return "broken"
    if "regressed" in verdicts:
        return "regression"
    if any(open_above(r, rule) for r in rows):
        return "unsettled"
    if rule.counts == "fail" and any(r.get("count_increases") for r in rows):
        return "counts"
    if any(eager_regressed(r) for r in rows):
        return "eager-regression"
    if rule.fail_on == "slower" and "slower" in verdicts:
        return "slower"
    if accuracy_code:
        return "accuracy"
    if not verdicts & {"same", "improved", "slower", "faster", "unsettled"}:
        return "unmeasured"
    return "pass"
