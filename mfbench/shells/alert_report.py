"""The kernel alert's reports: one row per set (``summary``), the markdown a PR comment shows (every set
whose verdict is not "same" first), and the JSON beside it (schema: ``alert-report.schema.json``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mfbench.shells.alert_rule import (MEANING, Rule, SetRecord, count_increases, count_text, eager_outcome,
                                       outcome, set_fails)
from mfbench.store.results import short_direction

REPORT_SCHEMA = "mfbench-alert-report/2"
SCHEMA_FILE = Path(__file__).with_name("alert-report.schema.json")


def _median_of_medians(runs: list[dict], field: str = "samples_s") -> float | None:
    medians = [statistics.median(r[field]) for r in runs if r["status"] == "ok" and r.get(field)]
    return statistics.median(medians) if medians else None


def _counts(runs: list[dict]) -> dict | None:
    """The per-call counts of a side: the largest of its rounds per count (see ``count_increases``)."""
    measured = [r["counts"] for r in runs if r.get("counts")]
    if not measured:
        return None
    return {n: max((c[n] for c in measured if c.get(n) is not None), default=None) for n in measured[0]}


def summary(records: dict[str, SetRecord], rule: Rule) -> list[dict]:
    rows = []
    for rec in records.values():
        verdict, reason, j = outcome(rec, rule)
        eager = eager_outcome(rec, rule) if verdict not in ("broken",) and j else None
        increases = count_increases([r.get("counts") for r in rec.base], [r.get("counts") for r in rec.head]) \
            if j else {}
        rows.append({"provider": rec.provider, "direction": rec.direction, "seq": rec.seq, "width": rec.width,
                     "dtype": rec.dtype, "method": next((r["method"] for r in rec.head + rec.base if r["method"]), ""),
                     "base_s": _median_of_medians(rec.base), "head_s": _median_of_medians(rec.head),
                     "ratio": j and j.ratio, "ratio_low": j and j.low, "ratio_high": j and j.high,
                     "settled": bool(j and j.settled), "rounds": len(rec.log_ratios), "verdict": verdict,
                     "reason": reason, "log_ratios": rec.log_ratios,
                     "eager": eager and {"base_s": _median_of_medians(rec.base, "eager_s"),
                                         "head_s": _median_of_medians(rec.head, "eager_s"), "ratio": eager.ratio,
                                         "ratio_low": eager.low, "ratio_high": eager.high, "settled": eager.settled,
                                         "verdict": eager.verdict, "log_ratios": rec.eager_log_ratios},
                     "counts_base": _counts(rec.base), "counts_head": _counts(rec.head),
                     "count_increases": {n: list(v) for n, v in increases.items()},
                     "samples_base_s": [r["samples_s"] for r in rec.base],
                     "samples_head_s": [r["samples_s"] for r in rec.head]})
    return rows


HEADLINES = {
    "broken": "**Broken**: a set that ran at base fails, is skipped, gives no value or lacks its counts at head.",
    "regression": "**Regression**: a set's kernels are slower than the threshold.",
    "unsettled": "**Unsettled**: a set's interval still holds 1.0 after the last round, its mean above the "
                 "threshold; the alert fails closed.",
    "counts": "**More work per call**: a set launches more kernels, synchronises or allocates more per call.",
    "eager-regression": "**Eager regression**: a set's eager call is slower than the eager threshold.",
    "slower": "**Slower** (`--fail-on slower`): a set's kernels are certainly slower, below the threshold.",
    "accuracy": "**Accuracy regression**: a provider's answers differ from reference's beyond the tolerance.",
    "unmeasured": "**Not measured**: no set could be compared at both commits, so nothing passes.",
    "pass": "No regression.",
    "no-kernel-change": "No kernel file changed; nothing to measure.",
}
ORDER = {"broken": 0, "regressed": 1, "unsettled": 3, "slower": 4, "improved": 5, "faster": 6, "same": 9}


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e6:.4g} us" if seconds < 1e-3 else f"{seconds * 1e3:.4g} ms"


def _interval(r: dict) -> str:
    return "-" if r["ratio"] is None else f"{r['ratio']:.3f} [{r['ratio_low']:.3f}-{r['ratio_high']:.3f}]"


def verdict_text(r: dict, factor: float) -> str:
    """The verdict as the table shows it: the word, what it claims, and the reason where there is one."""
    verdict = r["verdict"]
    word = f"**{verdict}**" if verdict in ("broken", "regressed") else verdict
    if verdict in ("slower", "faster"):
        word += f", below the threshold (x{factor:g})"
    return word + (f": {r['reason']}" if r["reason"] else "")


def _order(r: dict, rule: Rule) -> tuple:
    """Sets that fail the alert first, then those whose time, eager time or counts moved, then "same"."""
    eager = (r["eager"] or {}).get("verdict") not in (None, "same", "unsettled")
    moved = eager or bool(r["count_increases"]) or r["verdict"] != "same"
    return (0 if set_fails(r, rule) else 1 if moved else 2, ORDER.get(r["verdict"], 7), -(r["ratio"] or 0))


def _where(r: dict) -> str:
    return f"{r['provider']} {r['direction']} at {r['seq']}" + (f" (d = h = {r['width']})" if r["width"] else "")


def markdown(report: dict) -> str:
    rule = report["rule"]
    lines = [f"# mfbench kernel alert: {report['head'][:10]} vs {report['base'][:10]}", "",
             HEADLINES[report["verdict"]], "", f"Kernel files changed: {', '.join(report['files']) or '-'}"]
    if report["head_uncommitted"]:
        shown = ", ".join(report["head_uncommitted"][:8]) + (", ..." if len(report["head_uncommitted"]) > 8 else "")
        lines.append(f"Head is the working tree as it is, uncommitted changes included ({shown}), measured as "
                     f"the temporary commit {report['head'][:10]} on top of {report['head_ref']}.")
    if report["verdict"] == "no-kernel-change":
        return "\n".join(lines) + "\n"
    lines += [f"Device: {report['device']}; providers: {', '.join(report['providers'])}. Deciding signal: "
              "the kernels' own time per call (CUDA-graph replays on a GPU; CPU time per call on a CPU); beside "
              "it the eager call's time (GPU) and per-call counts.",
              f"Rule: head/base interval = mean of {rule['min_rounds']}-{rule['max_rounds']} paired rounds +- "
              f"{rule['z']:g} standard errors. same: inside x{1 / rule['factor']:.3f}-x{rule['factor']:g} and "
              f"holding 1; slower/faster: certain, below x{rule['factor']:g}; regressed/improved: beyond it; "
              f"unsettled: holding 1 and spanning it after the last round. Fails on: {rule['fail_on']}, an unsettled "
              f"set whose mean is above x{rule['factor']:g}"
              f"{', any count increase' if rule['counts'] == 'fail' else ''}, an eager interval above "
              f"x{rule['eager_factor']:g}. {report['rounds']} round(s) in {report['seconds']:.0f} s.", "",
              "| provider | dir | tokens | base | head | head/base [interval] | rounds | verdict | eager head/base | "
              "head kernels, syncs, bytes per call |", "|---|---|---|---|---|---|---|---|---|---|"]
    parsed = Rule(**rule)
    rows = sorted(report["sets"], key=lambda r: _order(r, parsed))
    for r in rows:
        eager = r["eager"]
        eager_text = "-" if not eager else f"{_interval(eager)} {eager['verdict']}"
        counts = r["counts_head"] or {}
        count_cell = ", ".join("-" if counts.get(n) is None else f"{counts[n]:.4g}" for n in ("kernels", "syncs", "bytes"))
        tokens = f"{r['seq']}" + (f" (d={r['width']})" if r["width"] else "")
        lines.append(f"| {r['provider']} | {short_direction(r['direction'])} | {tokens} | {_time(r['base_s'])} | "
                     f"{_time(r['head_s'])} | {_interval(r)} | {r['rounds']} | "
                     f"{verdict_text(r, rule['factor']).replace('|', '/')} | {eager_text} | {count_cell} |")
    more = [f"- {_where(r)}: {count_text({n: tuple(v) for n, v in r['count_increases'].items()})}"
            for r in rows if r["count_increases"]]
    if more:
        lines += ["", "## Per-call counts that increased", "", *more]
    lines += ["", "Verdict words: " + "; ".join(f"{k}: {v}" for k, v in MEANING.items()) + "."]
    accuracy = report["accuracy"]
    lines += ["", f"## Accuracy at {report['head'][:10]}", "",
              ("Not checked." if not accuracy["checked"] else "Every provider agrees with reference."
               if accuracy["exit_code"] == 0 else f"**Failed** (snapshot eval exit {accuracy['exit_code']})."),
              "", "```", accuracy["output"], "```"]
    return "\n".join(lines) + "\n"


def write_reports(report: dict, md: Path, js: Path) -> None:
    for path, text in ((md, markdown(report)), (js, json.dumps(report, indent=1, allow_nan=False))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
