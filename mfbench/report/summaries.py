"""Text summaries of result rows, as the commands print them: a run's (``run_summary``), the layer-kernel
records' against their floors (``layers_summary``), and two runs compared metric by metric (``compare``)."""

from __future__ import annotations

import json
import textwrap

import pandas as pd

from mfbench.bench.measurement import BELOW_FLOOR
from mfbench.core import registry
from mfbench.instruments.timing import HOST_METHOD, KERNEL_METHOD
from mfbench.store.results import short_direction, worse


def layers_summary(frame: pd.DataFrame) -> str:
    """One line per (case, provider): median, floor, fraction of floor, ratio to dense, the lookup's floor
    against dense's median (above 1: no lookup kernel can beat dense there), target, and on a GPU
    the host's time to issue one call ("bound" where the median is the host's) and the kernels' own device
    time (see ``measure.timing``)."""
    ran = frame[frame.get("median_ms").notna()] if "median_ms" in frame else frame.iloc[0:0]
    failed = "".join(f"\nFAILED: {r.case} {r.provider}: {r.failed}" for r in frame.itertuples()
                     if isinstance(getattr(r, "failed", None), str))
    if ran.empty:
        return "no provider ran" + failed
    dense = ran[ran["provider"].map(registry.is_baseline)].set_index("case")["median_ms"]
    out = pd.DataFrame({
        "case": ran["case"], "provider": ran["provider"],
        "median ms": ran["median_ms"].map("{:.4g}".format),
        "IQR ms": ((ran["q3_s"] - ran["q1_s"]) * 1e3).map("{:.2g}".format),
        "floor ms": ran["floor_ms"].map("{:.3g}".format) + " " + ran["floor_bound"],
        "of floor": (100 * ran["fraction_of_floor"]).map(lambda f: f"{f:.0f}%" + (" IMPOSSIBLE" if f > 100 else "")),
        "x dense": [f"{m / dense[c]:.1f}" if c in dense.index else "-" for c, m in zip(ran["case"], ran["median_ms"])],
        "target": [("-" if pd.isna(t) or m is None or pd.isna(m) else f"{t:g} ms {'met' if m else 'MISSED'}")
                   for t, m in zip(ran["target_ms"], ran["met_target"])],
    })
    if "host_s" in ran and ran["host_s"].notna().any():  # GPU only: CPU time to issue one call
        out["host ms"] = [("-" if pd.isna(h) else f"{h * 1e3:.3g}" + (" bound" if not pd.isna(b) and b else ""))
                          for h, b in zip(ran["host_s"], ran["host_bound"])]
    if "kernel_s" in ran and ran["kernel_s"].notna().any():  # GPU only: device time of the kernels alone
        out["kernel ms"] = ran["kernel_s"].map(lambda k: "-" if pd.isna(k) else f"{k * 1e3:.3g}")
    # The lookup's floor against dense: above 1, no lookup kernel can beat dense at this shape.
    out["floor/dense"] = [f"{f / dense[c]:.2g}" if c in dense.index and not registry.is_baseline(p) else "-"
                          for c, p, f in zip(ran["case"], ran["provider"], ran["floor_ms"])]
    errs = [c for c in ran.columns if c.startswith("rel_err_")]
    if errs:
        out["max rel err"] = ran[errs].max(axis=1).map(lambda v: "-" if pd.isna(v) else f"{v:.1e}")
    text = out.to_string(index=False)
    if (ran["fraction_of_floor"] > 1).any():
        text += (f"\nnote: a time below its floor ({BELOW_FLOOR}) means the ceilings are too low for this machine "
                 "now; measure them again with --refresh-ceilings on an idle machine")
    return text + failed


FLAGS_WIDTH = 40  # a longer flags cell (a skip's or failure's reason) goes to a numbered note below the table


def run_summary(frame: pd.DataFrame, wide: bool = False) -> str:
    """Time (and on a GPU the kernels' own device time), ratio to dense, achieved bandwidth, energy per token
    and sanity flags, one line per measurement. Unless ``wide``: long flags as numbered notes under the table,
    and asv's values (a bench run's, drawn by the dashboard) counted, not listed, so the table fits 120 columns."""
    if frame.empty:  # a run interrupted before its first row
        return "no rows"
    frame = frame[~frame["benchmark"].isin(["idle", "ceiling", "distributed"])]
    asv = frame["benchmark"].str.startswith("asv:")
    hidden = 0 if wide else int(asv.sum())
    frame = frame if wide else frame[~asv]
    if frame.empty:
        return "no rows" + (f" but {hidden} asv values (--wide lists them)" if hidden else "")
    quiet = ("2-per-mac", "FlopCounterMode", "nvml-energy-counter", "nvml-power-sampling", "cuda-allocator-peak",
             HOST_METHOD, KERNEL_METHOD)
    notes: set[str] = set()
    lines = []
    groups = frame.groupby(["benchmark", "params", "provider"], sort=False)
    times = {key: g.loc[g["metric"] == "time", "value"] for key, g in groups}
    baselines = {provider for provider in frame["provider"].unique() if registry.is_baseline(provider)}
    for (bench, params, provider), group in groups:
        value = dict(zip(group["metric"], group["value"]))
        p = json.loads(params)
        flags = set()
        for text in group["flags"].fillna(""):
            for flag in filter(None, str(text).split(",")):
                if flag.startswith("unavailable: ") or flag.startswith("process-peak"):
                    notes.add(flag)
                elif group["metric"].eq("skipped").all():
                    flags.add("skipped: " + flag)
                elif group["metric"].eq("failed").all():
                    flags.add("FAILED: " + flag)
                elif flag not in quiet:
                    flags.add(flag)
        t = value.get("time", float("nan"))
        dense = next((times[bench, params, b] for b in baselines if (bench, params, b) in times), None)
        dense = float(dense.iloc[0]) if dense is not None and len(dense) else float("nan")
        gbps, jpt = value.get("achieved_bandwidth", float("nan")), value.get("energy_per_token", float("nan"))
        kern = value.get("kernel_time", float("nan"))
        lines.append({
            # rows of other writers (asv imports, layer-kernel) name their parameters differently
            "benchmark": bench, "dir": short_direction(p.get("direction", "-")), "seq": p.get("seq", p.get("tokens", "-")),
            "provider": provider,
            "median ms": "-" if t != t else f"{t * 1e3:.4g}" + (" IMPOSSIBLE" if BELOW_FLOOR in flags else ""),
            "kernel ms": "-" if kern != kern else f"{kern * 1e3:.4g}",
            "x dense": "-" if t != t or dense != dense else f"{t / dense:.2f}",
            "GB/s": "-" if gbps != gbps else f"{gbps / 1e9:.1f}",
            "uJ/token": "-" if jpt != jpt else f"{jpt * 1e6:.3g}",
            "flags": ", ".join(sorted(flags)),
        })
    table = pd.DataFrame(lines)
    if (table["kernel ms"] == "-").all():  # no GPU rows: nothing to set beside the median
        table = table.drop(columns="kernel ms")
    footnotes: dict[str, int] = {}
    if not wide:
        table["flags"] = [f if len(f) <= FLAGS_WIDTH else f"[{footnotes.setdefault(f, len(footnotes) + 1)}]"
                          for f in table["flags"]]
    text = table.to_string(index=False)
    text += "".join("\n" + textwrap.fill(f"[{n}] {f}", 120, subsequent_indent="    ") for f, n in footnotes.items())
    for note in sorted(notes):
        text += f"\nnote: {note}"
    if hidden:
        text += (f"\nnote: and {hidden} asv values of this bench run (asv's own figures, drawn by the dashboard; "
                 "--wide lists them)")
    return text



def compare(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> list[dict]:
    """One record per (benchmark, params, provider) that both runs measured ``metric`` for: both values, B/A,
    the larger relative spread as the noise, a verdict by the metric's direction (host-bound times marked),
    and on GPU runs the ratio of the kernels' own times, steady where a time is the host's."""
    keys = ["benchmark", "params", "provider"]
    ta = a[a["metric"] == metric].set_index(keys)
    tb = b[b["metric"] == metric].set_index(keys)
    both = ta.merge(tb, left_index=True, right_index=True, how="inner", suffixes=("_a", "_b"))
    ka = a[a["metric"] == "kernel_time"].set_index(keys)["value"]
    kb = b[b["metric"] == "kernel_time"].set_index(keys)["value"]
    kernel_ratio = (kb / ka).dropna() if metric == "time" else ka.iloc[:0]
    words = ("slower", "faster") if metric.endswith("time") else ("worse", "better")
    compared = []
    for (bench, params, provider), row in both.iterrows():
        spreads = [(row[f"spread_high_{s}"] - row[f"spread_low_{s}"]) / row[f"value_{s}"] for s in "ab"]
        noise = max((x for x in spreads if x == x), default=0.0)  # NaN: a single figure, no spread
        ratio = row["value_b"] / row["value_a"]
        # "same" where B/A is within the spread, or the two runs' spreads (IQR) overlap: on a busy machine
        # two runs of one code differ by more than either run's own spread, never by more than both
        overlap = row["spread_low_a"] <= row["spread_high_b"] and row["spread_low_b"] <= row["spread_high_a"]
        verdict = ("same" if abs(ratio - 1) <= noise or overlap
                   else words[0] if worse(metric, row["value_a"], row["value_b"]) else words[1])
        if any("host-bound" in str(row[f"flags_{side}"]).split(",") for side in "ab"):
            verdict += " (host-bound)"
        below = [side.upper() for side in "ab" if BELOW_FLOOR in str(row[f"flags_{side}"]).split(",")]
        if below:
            verdict += f" ({' and '.join(below)} IMPOSSIBLE: below the floor)"
        compared.append({"benchmark": bench, "params": params, "provider": provider, "metric": metric,
                         "unit": row["unit_a"], "run_a": a["run_id"].iloc[0], "run_b": b["run_id"].iloc[0],
                         "a": row["value_a"], "b": row["value_b"], "ratio": ratio, "noise": noise, "verdict": verdict,
                         "kernel_ratio": kernel_ratio.get((bench, params, provider), float("nan"))})
    return compared


def compare_table(compared: list[dict]) -> str:
    """``compare``'s records as the table ``mfbench compare`` prints (a kernel column where a ratio exists)."""
    kernels = any(c["kernel_ratio"] == c["kernel_ratio"] for c in compared)
    out = []
    for c in compared:
        p = json.loads(c["params"])
        line = {"benchmark": c["benchmark"], "dir": short_direction(p.get("direction", "-")), "seq": p.get("seq", "-"),
                "provider": c["provider"], "A": f"{c['a']:.4g}", "B": f"{c['b']:.4g}", "B/A": f"{c['ratio']:.3f}",
                "IQR/median": f"{c['noise']:.1%}", "verdict": c["verdict"]}
        if kernels:
            k = c["kernel_ratio"]
            line["kernel B/A"] = "-" if k != k else f"{k:.3f}"
        out.append(line)
    return pd.DataFrame(out).to_string(index=False)


def builtin_names() -> list[str]:
    return [n for n in registry.names() if registry.get(n).origin == "built-in"]


def provider_order(names) -> list[str]:
    """``names`` in registry order (built-ins first), the others after them alphabetically: every legend
    and table lists the providers in one order."""
    builtins = builtin_names()
    present = set(names)
    return [n for n in builtins if n in present] + sorted(present - set(builtins))
