"""A run over a matrix of items: each one measured (``measure.measure``) or skipped or failed with the
reason, as it comes, then the kernel pass. ``mfbench run`` and ``mfbench layers`` both run here; the asv
suites measure their parameter sets with the same ``measure`` and ``kernel_pass``."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator

import torch

from mfbench.bench.cases import Item
from mfbench.bench.measure import Bench, kernel_pass, measure
from mfbench.bench.measurement import Measurement
from mfbench.core import providers, signals
from mfbench.core.lookup import input_checks


def attempt(item: Item, bench: Bench) -> Measurement:
    """``measure(item)``, or a measurement that says why there is none: skipped where this machine cannot
    run the provider, failed where it should and does not (``providers.readiness``, or it raised: an
    exception, a SystemExit or a KeyboardInterrupt of its own, ``signals.plugin_fault``)."""
    try:
        reason, fault = providers.readiness(item.provider, str(bench.device), item.dtype)
        if reason is None and fault is None:
            return measure(item, bench)
    except BaseException as exc:  # one failure must not lose the rest of the run, nor a plugin's exit end it
        if not signals.plugin_fault(exc):
            raise
        reason, fault = (providers.failure(exc), None) if providers.skips(exc) else (None, providers.failure(exc))
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    return Measurement(item, skipped=reason) if fault is None else Measurement(item, failed=fault)


def run_matrix(items: Iterable[Item], bench: Bench, progress: Callable[[str], None] = print) -> Iterator[Measurement]:
    """Measure every item, yielding each measurement as it comes and then each timed item's kernel time
    (a measurement of its own, the kernel pass's); a skip or failure is said on stderr once per reason,
    so it never goes unseen."""
    total = len(items) if hasattr(items, "__len__") else "?"
    start = time.perf_counter()
    timed: list[Item] = []
    warned: set[tuple[str, str]] = set()
    with input_checks(False):
        for i, item in enumerate(items, 1):
            m = attempt(item, bench)
            head = f"[{i}/{total}] {item.label}"
            why = m.skipped or m.failed
            if m.timing is None:
                status = "skipped" if m.skipped else "failed"
                progress(f"{head}  {status} ({why})")
                if (item.provider, why) not in warned:
                    warned.add((item.provider, why))
                    print(f"mfbench: {item.provider} {status}: {why}", file=sys.stderr, flush=True)
                yield m
                continue
            energy = m.value("energy_per_token")
            joules = "" if energy != energy else f"  {energy * 1e6:.3g} uJ/token"
            failed = f"  FAILED: {m.failed}" if m.failed else ""
            progress(f"{head}  {m.timing.median_s * 1e3:.4g} ms{joules}{failed}  "
                     f"({time.perf_counter() - start:.0f}s elapsed)")
            timed.append(item)
            yield m
    yield from kernel_pass(timed, bench.device, progress)
