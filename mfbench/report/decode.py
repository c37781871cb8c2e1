"""Decoding, from the result tables: the ``decode-layer`` and ``decode-model`` rows of ``mfbench run --preset
decode``, the break-even batch per device and layer width, and the markdown the README's findings carry.

The analytic break-even is B = tau: a step of B tokens makes the lookup read B x K = B d / tau rows of
width h, the dense layer its d x h weights, so below tau tokens the lookup moves fewer bytes. The measured
break-even is the largest batch B up to which the fastest lookup provider is faster than dense at every
measured batch, judged by the spread: faster where the lookup's upper quartile lies below dense's lower
one, slower where its lower quartile lies above dense's upper one, a tie otherwise.

    python -m mfbench.report.findings decode --device H200
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from mfbench.bench.cases import DECODE_LAYER, DECODE_MODEL, KERNEL
from mfbench.core import registry

FIGURES = (("graph_time", "graph replay"), ("time", "eager call"))
BUSY = "busy-machine"  # the flag on rows measured while other work shared the machine: a direction, not a value


def machine(fingerprint: str, device: str) -> str:
    """The machine a row was measured on: the device, and for a CPU its model (CPU rows share a device
    name across models)."""
    if not str(device).startswith("cpu"):
        return device
    fp = json.loads(fingerprint)
    return f"{device} ({fp.get('cpu', '?')})"


def decode_frame(frame: pd.DataFrame, device: str) -> pd.DataFrame:
    """``device``'s decode rows, newest per (machine, params, provider, metric), with their params as columns:
    d, h, tau, B (tokens a step), preset and cache L (steps), dtype, and the machine."""
    rows = frame[frame["benchmark"].isin([DECODE_LAYER, DECODE_MODEL]) & (frame["device"] == device)]
    rows = rows[rows["value"] == rows["value"]].sort_values("time_utc")
    if rows.empty:
        return rows.assign(machine=[], d=[], h=[], tau=[], B=[], preset=[], cache=[], dtype=[])
    params = [json.loads(p) for p in rows["params"]]
    rows = rows.assign(
        machine=[machine(f, d) for f, d in zip(rows["fingerprint"], rows["device"])],
        d=[p.get("in_features", p.get("d")) for p in params], h=[p.get("out_features", p.get("d")) for p in params],
        tau=[p["tau"] for p in params], B=[p["tokens"] for p in params],
        preset=[p.get("preset", "") for p in params], cache=[p.get("cache", 0) for p in params],
        dtype=[p["dtype"] for p in params])
    return rows.drop_duplicates(["machine", "benchmark", "params", "provider", "metric"], keep="last")


def figure_of(rows: pd.DataFrame) -> str:
    """The step time a verdict reads: CUDA-graph replay where the rows have it (how decoders deploy), else
    the eager call."""
    return "graph_time" if (rows["metric"] == "graph_time").any() else "time"


def _best(at: pd.DataFrame, metric: str) -> tuple[pd.Series | None, pd.Series | None]:
    """(the fastest lookup provider's row, dense's row) of one step's ``metric``."""
    rows = at[at["metric"] == metric]
    base = rows[rows["provider"].map(registry.is_baseline).astype(bool)]
    look = rows[~rows.index.isin(base.index)]
    best = look.loc[look["value"].idxmin()] if not look.empty else None
    return best, (base.iloc[-1] if not base.empty else None)


def compare(lookup: pd.Series, dense: pd.Series) -> str:
    """``faster``, ``slower`` or ``tie``: the lookup's time against dense's, by their interquartile ranges
    (the median itself where a row has no spread)."""
    lo_l, hi_l = _spread(lookup)
    lo_d, hi_d = _spread(dense)
    if hi_l < lo_d:
        return "faster"
    if lo_l > hi_d:
        return "slower"
    return "tie"


def _spread(row: pd.Series) -> tuple[float, float]:
    lo, hi = row.get("spread_low"), row.get("spread_high")
    ok = lo is not None and hi is not None and lo == lo and hi == hi
    return (float(lo), float(hi)) if ok else (float(row["value"]), float(row["value"]))


@dataclass(frozen=True)
class Verdict:
    machine: str
    d: int
    h: int
    tau: int
    dtype: str
    figure: str
    break_even: int | None  # the largest B up to which the lookup is faster at every measured batch
    word: str  # "break-even B = N", "beyond B = N" or "none"
    why: str


def layer_verdicts(rows: pd.DataFrame) -> list[Verdict]:
    """Per machine and layer shape of ``decode_frame`` rows: the measured break-even batch, or none, and why."""
    layer = rows[rows["benchmark"] == DECODE_LAYER]
    found = []
    for (where, d, h, tau, dtype), group in layer.groupby(["machine", "d", "h", "tau", "dtype"], sort=True):
        for _, metric, compared in _compared(group, ["B"]):
            steps = [(int(_scalar(b)), best, dense, compare(best, dense), at) for b, at, best, dense in compared]
            if steps:
                found.append(_verdict((where, int(d), int(h), int(tau), dtype), metric, steps))
    return found


def _scalar(key):
    return key[0] if isinstance(key, tuple) else key


def _verdict(key: tuple, metric: str, steps: list) -> Verdict:
    tau = key[3]
    outcomes = [s[3] for s in steps]
    lead = next((i for i, o in enumerate(outcomes) if o != "faster"), len(outcomes))
    figure = dict(FIGURES)[metric]
    b0, best, dense, _, at = steps[0]
    ratio = best["value"] / dense["value"]
    bytes_ratio = _bytes_ratio(at, best["provider"], dense["provider"])
    reads = f", reading {bytes_ratio:.2g}x its modelled bytes" if bytes_ratio == bytes_ratio else ""
    first = f"at B = {b0} the fastest lookup ({best['provider']}) takes {ratio:.2g}x dense's {figure}{reads}"
    batches = [s[0] for s in steps]
    doubling = all(b2 == 2 * b1 for b1, b2 in zip(batches, batches[1:]))  # the sweeps' 1, 2, 4, ...: a range
    measured = f"B = {batches[0]}-{batches[-1]}" if doubling and len(batches) > 2 else f"B = {', '.join(map(str, batches))}"
    if lead == 0:
        said = "tied with" if outcomes[0] == "tie" else "slower than"
        why = f"{first}: {said} dense at the smallest batch (measured {measured}; analytic break-even B = {tau})"
        return Verdict(*key, metric, None, "none", why)
    b = steps[lead - 1][0]
    if lead == len(steps):
        why = f"{first}; faster at every measured batch ({measured}; analytic break-even B = {tau})"
        return Verdict(*key, metric, b, f"beyond B = {b}", why)
    after = steps[lead]
    again = [str(s[0]) for s in steps[lead + 1:] if s[3] == "faster"]
    again = f", faster again at B = {', '.join(again)}" if again else ""
    why = (f"{first}; faster up to B = {b}, {after[3]} at B = {after[0]}{again} "
           f"(measured {measured}; analytic break-even B = {tau})")
    return Verdict(*key, metric, b, f"break-even B = {b}", why)


def _bytes_ratio(at: pd.DataFrame, lookup: str, dense: str) -> float:
    got = at[at["metric"] == "hbm_bytes_min"].set_index("provider")["value"]
    return float(got[lookup] / got[dense]) if lookup in got and dense in got else float("nan")


def _ms(value: float) -> str:
    return "-" if value != value else f"{value * 1e3:.3g}"


def _value(at: pd.DataFrame, provider: str | None, metric: str) -> float:
    hit = at[(at["provider"] == provider) & (at["metric"] == metric)]
    return float("nan") if hit.empty else float(hit["value"].iloc[-1])


def _measured_bytes(frame: pd.DataFrame, device: str, params: str, provider: str) -> float:
    """DRAM bytes Nsight Compute counted for the same layer call (``mfbench profile --cases decode`` writes
    them as layer-kernel rows of the same params), or NaN."""
    hit = frame[(frame["benchmark"] == KERNEL) & (frame["device"] == device) & (frame["params"] == params)
                & (frame["provider"] == provider) & (frame["metric"] == "measured_dram_bytes")]
    hit = hit[hit["value"] == hit["value"]]
    return float("nan") if hit.empty else float(hit.sort_values("time_utc")["value"].iloc[-1])


def _mb(value: float) -> str:
    return "-" if value != value else f"{value / 1e6:.3g}"


def _compared(rows: pd.DataFrame, keys: list[str]):
    """Per machine: its label, the figure compared and, per ``keys`` group with a lookup and dense, (key,
    rows, the fastest lookup's row, dense's row)."""
    for where, mine in rows.groupby("machine", sort=True):
        metric = figure_of(mine)
        found = [(key, at, *_best(at, metric)) for key, at in mine.groupby(keys, sort=True)]
        yield where + _busy(mine), metric, [f for f in found if f[2] is not None and f[3] is not None]


def _table(frame: pd.DataFrame, device: str, benchmark: str, keys: list[str], head: str, line) -> str:
    """A markdown table per machine of ``device``'s ``benchmark`` rows, one ``line(key, at, best, dense)``
    per ``keys`` group; ``head`` has {where} and {figure}."""
    rows = decode_frame(frame, device)
    rows = rows[rows["benchmark"] == benchmark]
    if rows.empty:
        return f"no {benchmark} rows for device {device}\n"
    lines = []
    for where, metric, found in _compared(rows, keys):
        if not found:  # a machine without both a lookup and dense at any step: nothing to compare
            continue
        lines += [head.format(where=where, figure=dict(FIGURES)[metric]), "|---" * (head.count("|") - 1) + "|"]
        lines += [line(*f) for f in found] + [""]
    if benchmark == DECODE_LAYER:
        lines += _verdict_lines(rows) + [""]
    return "\n".join(lines) + "\n" + _runs(rows)


def _verdict_lines(rows: pd.DataFrame) -> list[str]:
    return [f"- {v.machine}, d={v.d} h={v.h} {v.dtype}: **{v.word}**: {v.why}." for v in layer_verdicts(rows)]


def decode_verdicts(frame: pd.DataFrame, device: str) -> str:
    """The README's decode findings of ``device``: the break-even batch per layer width and why, and the runs
    (the tables behind them: ``decode_table``, in results/decode.md)."""
    rows = decode_frame(frame, device)
    rows = rows[rows["benchmark"] == DECODE_LAYER]
    if rows.empty:
        return f"no {DECODE_LAYER} rows for device {device}\n"
    return "\n".join(_verdict_lines(rows)) + "\n\n" + _runs(rows)


def layer_table(frame: pd.DataFrame, device: str) -> str:
    def line(key, at, best, dense) -> str:
        (d, h, b), params = key, at["params"].iloc[0]
        cells = [f"d={d} h={h}", str(b), f"{best['provider']} {_ms(best['value'])}", _ms(dense["value"]),
                 f"{_ratio(best['value'] / dense['value'])} ({compare(best, dense)})"]
        for name in (best["provider"], dense["provider"]):
            cells.append(f"{_mb(_value(at, name, 'hbm_bytes_min'))} / {_mb(_measured_bytes(frame, device, params, name))}")
        weights = _value(at, best["provider"], "parameter_bytes") / _value(at, dense["provider"], "parameter_bytes")
        return "| " + " | ".join(cells + ["-" if weights != weights else f"{weights:.3g}"]) + " |"

    head = ("| {where}, {figure} | B | fastest lookup (ms) | dense (ms) | lookup / dense | lookup MB (modelled / ncu) "
            "| dense MB (modelled / ncu) | tables / dense weights |")
    return _table(frame, device, DECODE_LAYER, ["d", "h", "B"], head, line)


def _ratio(value: float) -> str:
    """Three figures, trailing zeros kept (1.00, not 1); whole numbers from 100 up."""
    return f"{value:#.3g}" if abs(value) < 100 else f"{value:.0f}"


def model_table(frame: pd.DataFrame, device: str) -> str:
    def line(key, at, best, dense) -> str:
        (preset, cache, b), name, base = key, best["provider"], dense["provider"]
        eager = f"{_ms(_value(at, name, 'time'))} / {_ms(_value(at, base, 'time'))}"
        energy = f"{_ms(_value(at, name, 'energy_per_token'))} / {_ms(_value(at, base, 'energy_per_token'))}"
        params = f"{_value(at, name, 'parameter_bytes') / 1e9:.3g} / {_value(at, base, 'parameter_bytes') / 1e9:.3g}"
        return (f"| {preset} L={cache} | {b} | {name} {_ms(best['value'])} | {_ms(dense['value'])} | "
                f"{_ratio(best['value'] / dense['value'])} ({compare(best, dense)}) | {eager} | {energy} | {params} |")

    head = ("| {where}, one step | B | {figure}: MemoryFormer (ms) | dense (ms) | ratio | eager: MemoryFormer / dense "
            "(ms) | eager call's mJ per token: MemoryFormer / dense | parameter GB: MemoryFormer / dense |")
    return _table(frame, device, DECODE_MODEL, ["preset", "cache", "B"], head, line)


def _busy(rows: pd.DataFrame) -> str:
    flagged = rows["flags"].fillna("").str.split(",").map(lambda f: BUSY in f)
    return f" ({BUSY}: {int(flagged.sum())} of {len(rows)} rows)" if flagged.any() else ""


def _runs(rows: pd.DataFrame) -> str:
    listed = ", ".join(f"`{r}` ({c[:7]})" for r, c in rows[["run_id", "commit"]].drop_duplicates().itertuples(index=False))
    return f"Runs {listed}.\n"


def decode_table(frame: pd.DataFrame, device: str) -> str:
    """results/decode.md's tables of ``device``: the single layers with their verdicts, then the steps."""
    return layer_table(frame, device) + "\n" + model_table(frame, device)
