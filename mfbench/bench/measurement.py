"""What measuring one item found, typed, and the one place it becomes result rows (``to_rows``) or the
flat record ``mfbench layers --csv`` writes and its summary reads (``record``).

Flags stay a tuple of strings until a row is written: ``Run.row`` joins them, escaping the separator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mfbench.bench.cases import Item
from mfbench.core import providers
from mfbench.instruments.timing import Timing, beside
from mfbench.store.results import Run

# A time under its floor is impossible: the ceilings it was derived from are too low (measured under load,
# or on another machine). Flagged like bandwidth above the copy ceiling, in the rows and the printout.
BELOW_FLOOR = "time-below-floor"
HOST_BOUND = "host-bound"


@dataclass(frozen=True)
class Figure:
    metric: str
    value: float
    unit: str
    flags: tuple[str, ...] = ()
    spread: tuple[float, float] | None = None  # (q1, q3): the interquartile range
    samples: int | None = None


@dataclass
class Measurement:
    """An item's figures, or why it has none: ``skipped`` (this machine cannot run it) or ``failed`` (it
    should and does not; a failed float64 check keeps the figures, and is never a pass)."""

    item: Item
    timing: Timing | None = None
    time_flags: tuple[str, ...] = ()
    figures: list[Figure] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)  # relative errors against float64, by output
    floor: tuple[float, str] | None = None  # (seconds, what bounds it: hbm, onchip or compute)
    config: str | None = None  # the autotuner's choice for the call
    skipped: str | None = None
    failed: str | None = None

    def add(self, metric: str, value: float, unit: str, flags: tuple[str, ...] | list[str] = (),
            spread: tuple[float, float] | None = None, samples: int | None = None) -> None:
        self.figures.append(Figure(metric, value, unit, tuple(flags), spread, samples))

    def value(self, metric: str) -> float:
        """A figure's value; NaN where there is none (never 0 for 'unknown')."""
        return next((f.value for f in self.figures if f.metric == metric), float("nan"))

    @property
    def met_target(self) -> bool | None:
        """Whether the time met the case's target; None where there is none (the targets are the autotuned
        kernels'; other providers are shown for scale)."""
        target = self.item.case.target_ms if self.item.case is not None else None
        if target is None or self.timing is None or not providers.get(self.item.provider).autotuned:
            return None
        return self.timing.median_s * 1e3 <= target


def time_figures(m: Measurement) -> list[Figure]:
    """The time figure with its flags, and the host's and kernels' figures that go beside it on a GPU."""
    t = m.timing
    flags = list(m.time_flags)
    if m.floor is not None:
        flags.insert(0, f"floor:{m.floor[1]}")
    if m.config:
        flags.append(f"config {m.config}")
    if m.met_target is not None:
        flags.append("target-met" if m.met_target else "target-missed")
    if m.floor is not None and m.floor[0] > t.median_s:
        flags.append(BELOW_FLOOR)
    out = [Figure("time", t.median_s, "s", tuple(dict.fromkeys(flags)), (t.q1_s, t.q3_s), t.samples)]
    return out + [Figure(metric, value, unit, tuple(why)) for metric, value, unit, why in beside(t)]


def to_rows(m: Measurement, run: Run) -> list[dict]:
    """The result rows of a measurement: its skip or failure with the reason, then every figure."""
    item, params = m.item, m.item.params()
    rows = [run.row(item.benchmark, params, item.provider, status, float("nan"), "", flags=[why])
            for status, why in (("skipped", m.skipped), ("failed", m.failed)) if why]
    figures = (time_figures(m) if m.timing is not None else []) + m.figures
    for f in figures:
        spread = f.spread or (None, None)
        rows.append(run.row(item.benchmark, params, item.provider, f.metric, f.value, f.unit, spread_low=spread[0],
                            spread_high=spread[1], spread_kind="iqr" if f.spread else "", samples=f.samples,
                            flags=f.flags))
    return rows


def merge(measurements: list[Measurement]) -> list[Measurement]:
    """One measurement per item: the kernel pass's figures (measurements of their own, made last) added to
    the item's first."""
    first: dict[Item, Measurement] = {}
    for m in measurements:
        if m.item in first:
            first[m.item].figures.extend(m.figures)
        else:
            first[m.item] = m
    return list(first.values())


def record(m: Measurement) -> dict:
    """One flat record of a layer-kernel measurement: what ``mfbench layers --csv`` writes and its summary
    reads (times in ms beside the seconds of ``Timing``)."""
    item, case = m.item, m.item.case
    out = {"case": case.name, "direction": case.direction, "tokens": case.tokens, "in_features": case.in_features,
           "out_features": case.out_features, "tau": case.tau, "weighting": case.weighting, "provider": item.provider,
           "dtype": str(item.dtype).removeprefix("torch."), "target_ms": case.target_ms}
    out.update({f"rel_err_{k}": v for k, v in m.errors.items()})
    if m.timing is not None:
        t = m.timing
        kernel = m.value("kernel_time")
        out.update(t.as_dict(), kernel_s=kernel if kernel == kernel else t.kernel_s, host_bound=t.host_bound,
                   median_ms=t.median_s * 1e3, met_target=m.met_target, kernel_config=m.config,
                   within_tolerance=not (m.failed or "").startswith(providers.FLOAT64_CHECK))
        if m.floor is not None:
            out.update(floor_ms=m.floor[0] * 1e3, floor_bound=m.floor[1], fraction_of_floor=m.floor[0] / t.median_s)
        out.update(hbm_gbps=m.value("achieved_bandwidth") / 1e9)
    if m.skipped:
        out["skipped"] = m.skipped
    if m.failed:
        out["failed"] = m.failed
    return out
