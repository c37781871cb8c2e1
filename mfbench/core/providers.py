"""The providers as every runner meets them: the registry's API (``mfbench.core.registry``, where
providers are registered and described) and whether a provider runs here, and runs right: the trial run
of a tiny layer, the float64 check, the time budget. What every runner reports comes from ``readiness``:

- skipped (this machine cannot run it): a device or dtype it does not declare, its ``requirement`` or
  ``probe`` says why, or it raised ``ProviderUnavailable`` (Triton's ``TritonFailure`` counts as one);
- failed (it should run here and does not): it raised anything else, returned another shape or dtype or
  non-finite values, an exact provider's values are off the float64 reference, or one call took longer
  than its time budget. A failed provider is never reported as passing an accuracy check.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import time
from typing import Callable, ContextManager, NamedTuple

import torch

from mfbench.config import settings
from mfbench.core import signals
from mfbench.core.lookup import reference_lookup
from mfbench.core.model import MemoryLayer
from mfbench.core.registry import (ENTRY_POINT_GROUP, MODULES_ENV, REGISTRY_FILES, OverBudget, Provider,
                                   ProviderModuleError, ProviderUnavailable, baseline, caveats, cost_factor, get,
                                   is_baseline, load_errors, load_module, module_specs, names, one_line, one_process, reference,
                                   register, register_provider, requirement_unmet, source_globs, touched_by,
                                   unregister)

__all__ = [  # the registry's API, re-exported: one module for every runner and plugin
    "ENTRY_POINT_GROUP", "MODULES_ENV", "REGISTRY_FILES", "OverBudget", "Provider", "ProviderModuleError",
    "ProviderUnavailable", "baseline", "caveats", "cost_factor", "get", "is_baseline", "load_errors", "load_module",
    "module_specs", "names", "one_line", "one_process", "reference", "register", "register_provider",
    "requirement_unmet", "source_globs", "touched_by", "unregister",
    "TOLERANCE", "relative_error", "relative_errors", "unavailable", "Trial", "trial", "output_problem",
    "float64_mismatch", "FLOAT64_CHECK", "tolerance_breach", "trial_failure", "Readiness", "readiness", "skips", "budget", "within_budget", "failure",
    "Misbehaved", "deadline", "checked_call", "nonfinite",
]

# ||out - ref|| / ||ref|| allowed against float64, by the dtype of inputs and outputs.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-5}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf where out has a NaN or Inf."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def relative_errors(layer: MemoryLayer, x: torch.Tensor, gy: torch.Tensor, direction: str) -> dict[str, float]:
    """||out - ref|| / ||ref|| against a float64 reference, for y or for both gradients."""
    spec = layer.spec
    x64 = x.detach().double().requires_grad_(direction == "backward")
    t64 = layer.tables.detach().double().requires_grad_(direction == "backward")
    xr = x.detach().clone().requires_grad_(direction == "backward")
    fn = get(layer.provider).fn
    if direction == "forward":
        with torch.no_grad():
            return {"y": relative_error(fn(layer, xr), reference_lookup(x64, t64, spec))}
    y = fn(layer, xr)
    gx, gt = torch.autograd.grad(y, (xr, layer.tables), gy)
    rgx, rgt = torch.autograd.grad(reference_lookup(x64, t64, spec), (x64, t64), gy.double())
    return {"grad_x": relative_error(gx, rgx), "grad_tables": relative_error(gt, rgt)}


@functools.lru_cache(maxsize=None)
def unavailable(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why ``name`` cannot run on ``device`` with ``dtype`` (None if it can): the static requirement, then
    a trial run (``trial_failure``), so a compile or launch failure is a reason rather than a crash later."""
    return requirement_unmet(name, device, dtype) or trial_failure(name, device, dtype)


class Trial(NamedTuple):
    """What the trial run of a tiny layer found: ``skip`` (it cannot run here), ``error`` (it raised, or gave
    another shape or dtype, or non-finite values), ``mismatch`` (an exact provider off the float64 reference)."""

    skip: str | None = None
    error: str | None = None
    mismatch: str | None = None


def _unavailable_error(exc: BaseException) -> bool:
    """An exception that means 'cannot run here' rather than 'broken'. Triton's TritonFailure (a Triton
    that cannot compile or interpret the kernels) is one; its module is only loaded where Triton ran."""
    kernels = sys.modules.get("mfbench.kernels.lookup")
    triton_failure = getattr(kernels, "TritonFailure", ()) if kernels is not None else ()
    return isinstance(exc, ProviderUnavailable) or bool(triton_failure) and isinstance(exc, triton_failure)


TRIAL_SHAPE = (5, 16, 24)  # tokens, in_features, out_features of the trial layer


@functools.lru_cache(maxsize=None)
def trial(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Trial:
    """A tiny layer through ``name``, forward and backward: whether it runs, returns (tokens, out) in the
    input's dtype with finite values, within its time budget, and (exact providers) agrees with the float64
    reference in output and both gradients."""
    provider = get(name)
    if provider.load_error:
        return Trial(error=provider.load_error)
    dev = torch.device(device)
    tokens, d_in, d_out = TRIAL_SHAPE
    try:
        g = torch.Generator().manual_seed(0)
        layer = MemoryLayer(d_in, d_out, tau=8, bias=False, provider=name)
        with torch.no_grad():
            layer.tables.copy_(torch.randn(layer.tables.shape, generator=g))
        layer = layer.to(device=dev, dtype=dtype)
        x = torch.randn(tokens, d_in, generator=g).to(device=dev, dtype=dtype).requires_grad_()
        gy = torch.randn(tokens, d_out, generator=g).to(device=dev, dtype=dtype)
        watched = {"its input x": x, "layer.tables": layer.tables}
        with _probe_context(name):
            y = checked_call(name, lambda: provider.fn(layer, x), watched)
            wrong = output_problem(y, (tokens, d_out), dtype)
            if wrong:
                return Trial(error=wrong)
            with deadline(budget(name), "the backward of one call"):  # dense uses no tables
                grads = checked_call(name, lambda: torch.autograd.grad(y, (x, layer.tables), gy, allow_unused=True),
                                     watched, budgeted=False)
    except BaseException as exc:  # any failure of the provider's code here is an answer, never a crash
        if not signals.plugin_fault(exc):
            raise
        reason = one_line(exc)
        return Trial(skip=reason) if _unavailable_error(exc) else Trial(error=reason)
    if not provider.exact:
        return Trial()
    return Trial(mismatch=float64_mismatch(layer, x, gy, y, grads, dtype))


def output_problem(y: object, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """Why a provider's output is not a lookup's: not a tensor, another shape or dtype, NaN or Inf."""
    if not isinstance(y, torch.Tensor):
        return f"returned {type(y).__name__}, not a tensor"
    if tuple(y.shape) != tuple(shape):
        return f"returned shape {tuple(y.shape)}, expected {tuple(shape)} (tokens, out_features)"
    if y.dtype != dtype:
        return f"returned {str(y.dtype).removeprefix('torch.')} for {str(dtype).removeprefix('torch.')} input"
    if not torch.isfinite(y.detach()).all():
        return "returned NaN or Inf"
    return None


def float64_mismatch(layer: "MemoryLayer", x: torch.Tensor, gy: torch.Tensor, y: torch.Tensor,
                     grads: tuple[torch.Tensor, ...], dtype: torch.dtype) -> str | None:
    """Which of y, dL/dx and dL/dtables is off the float64 reference by more than ``dtype`` allows."""
    x64 = x.detach().double().requires_grad_()
    t64 = layer.tables.detach().double().requires_grad_()
    ref = reference_lookup(x64, t64, layer.spec)
    want = (ref, *torch.autograd.grad(ref, (x64, t64), gy.double()))
    for label, got, expected in zip(("y", "grad_x", "grad_tables"), (y, *grads), want):
        breach = tolerance_breach(label, relative_error(got, expected), dtype)
        if breach:
            return breach
    return None


FLOAT64_CHECK = "float64 check"  # how a breach's message begins


def tolerance_breach(label: str, err: float, dtype: torch.dtype) -> str | None:
    """Why ``label``'s relative error against float64 is above what ``dtype`` allows (NaN is), or None."""
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    if err <= tolerance:
        return None
    return (f"{FLOAT64_CHECK}: relative error of {label} {err:.2g} is above the "
            f"{str(dtype).removeprefix('torch.')} tolerance {tolerance:g}")


def trial_failure(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """How a tiny layer fails through ``name``, forward and backward (None if it runs and passes)."""
    found = trial(name, device, dtype)
    return found.skip or found.error or found.mismatch


class Readiness(NamedTuple):
    skip: str | None = None  # this machine cannot run it: a 'skipped' row
    fault: str | None = None  # it should run here and does not: a 'failed' row, never a pass


def readiness(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Readiness:
    """Whether a runner should measure ``name`` here, skip it, or report it failed (see the module's doc)."""
    why = requirement_unmet(name, device, dtype)
    if why:
        return Readiness(skip=why)
    found = trial(name, device, dtype)
    return Readiness(skip=found.skip, fault=found.error or found.mismatch)


def skips(exc: BaseException) -> bool:
    """Whether a measurement that raised ``exc`` is a skip (out of memory, unavailable) rather than a failure."""
    return isinstance(exc, torch.OutOfMemoryError) or _unavailable_error(exc)


def budget(name: str) -> float | None:
    """Seconds one call of ``name`` may take: its own ``budget_s``, else MFBENCH_CALL_BUDGET_S, else none."""
    own = get(name).budget_s
    return own if own is not None else settings().call_budget_s


class Misbehaved(Exception):
    """A provider's call broke the rules every call keeps: it wrote into its inputs or the layer's tables,
    or returned NaN or Inf."""


@contextlib.contextmanager
def deadline(limit: float | None, what: str = "one call"):
    """Stop what runs inside after ``limit`` seconds: SIGALRM raises OverBudget where the code is (Python
    code, or a sleep; a kernel blocking in C runs on until it returns, and is failed then). In the main
    thread only, and nothing without a limit; a timer already set is put back, less the time spent."""
    if limit is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise OverBudget(f"{what} took longer than its time budget of {limit:g} s and was stopped")

    previous = signal.signal(signal.SIGALRM, expired)
    earlier, _ = signal.setitimer(signal.ITIMER_REAL, limit)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if earlier:
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, earlier - (time.monotonic() - started)))


def within_budget(name: str, call: Callable[[], object]) -> object:
    """``call()``, timed once and stopped at the provider's budget (``deadline``); OverBudget if it took
    longer (no budget: just the call)."""
    limit = budget(name)
    start = time.perf_counter()
    with deadline(limit):
        out = call()
        if limit is not None and isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)
    took = time.perf_counter() - start
    if limit is not None and took > limit:
        raise OverBudget(f"one call took {took:.3g} s, over its time budget of {limit:g} s")
    return out


def _fingerprint(t: torch.Tensor) -> tuple[float, ...]:
    """The sum in float64, one pass without a copy: a model's tables can be gigabytes, and any write that
    is not a rearrangement of the same values changes it."""
    t = t.detach()
    if t.numel() == 0:
        return ()
    return (torch.sum(t if t.is_floating_point() else t.double(), dtype=torch.float64).item(),)


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x == y or (x != x and y != y) for x, y in zip(a, b))  # NaN where NaN was is unchanged


def nonfinite(out: object) -> bool:
    """Whether a call's output (a tensor, or a tuple of them as a backward's gradients) holds NaN or Inf."""
    if isinstance(out, torch.Tensor):
        return out.is_floating_point() and not bool(torch.isfinite(out.detach()).all())
    if isinstance(out, (tuple, list)):
        return any(nonfinite(o) for o in out)
    return False


def checked_call(name: str, call: Callable[[], object], watched: dict[str, torch.Tensor], budgeted: bool = True,
                 where: str = "") -> object:
    """``call()`` once, the first call at a shape: within the provider's budget (``within_budget``), its
    output finite, and each tensor of ``watched`` (by the name a message gives it) left as it was."""
    before = {label: _fingerprint(t) for label, t in watched.items()}
    out = within_budget(name, call) if budgeted else call()
    if nonfinite(out):
        raise Misbehaved(f"returned NaN or Inf{where}")
    for label, t in watched.items():
        if not _same(before[label], _fingerprint(t)):
            raise Misbehaved(f"wrote into {label}{where}")
    return out


def _probe_context(name: str) -> ContextManager:
    """The trial run needs no autotuning: it only asks whether the kernels compile and launch."""
    untuned = get(name).untuned
    return untuned() if untuned is not None else contextlib.nullcontext()




def failure(exc: BaseException) -> str:
    """A measurement's exception in one line, for a 'skipped' or 'failed' row or a progress message."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{'out of memory' if isinstance(exc, torch.OutOfMemoryError) else 'failed'}: {type(exc).__name__}: {first}"
