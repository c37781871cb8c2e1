"""The one registry of Memory Layer implementations ("providers").

Every runner (the model, the kernel benchmark, the asv suites, the CLI, the tests) picks implementations
here and nowhere else. A provider maps ``(layer, x)`` with ``x`` of shape (tokens, in_features) to the
layer's output without bias, in ``x``'s dtype, and supports autograd. ``exact`` providers compute the
Memory Layer's own function (they enter the float64 and snapshot accuracy checks); ``dense`` is the
``nn.Linear`` the layer replaces, the baseline every figure is compared with.

Providers from outside mfbench (the public API, ``mfbench.register_provider``):

- an installed package names them in the ``mfbench.providers`` entry-point group; the group is read
  the first time the registry is asked for a name, never at ``import mfbench``;
- ``--provider-module FILE_OR_MODULE`` on the command line, and ``MFBENCH_PROVIDER_MODULES`` (paths or
  module names separated by ``os.pathsep`` or commas) for every process, the asv suites' included.

A plugin that cannot be loaded never stops a run: it becomes a provider of its own name whose every row
is ``failed`` with the one-line reason. What each runner reports, from ``readiness``:

- skipped (this machine cannot run it): a device or dtype it does not declare, its ``requirement`` or
  ``probe`` says why, or it raised ``ProviderUnavailable`` (Triton's ``TritonFailure`` counts as one);
- failed (it should run here and does not): it raised anything else, returned another shape or dtype or
  non-finite values, an exact provider's values are off the float64 reference, or one call took longer
  than its time budget. A failed provider is never reported as passing an accuracy check.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F

from mfbench.lookup import lookup_block, bucket_weight, reference_lookup, sign_hash, split_chunks

if TYPE_CHECKING:
    from mfbench.model import MemoryLayer

LookupFn = Callable[["MemoryLayer", torch.Tensor], torch.Tensor]
ENTRY_POINT_GROUP = "mfbench.providers"
MODULES_ENV = "MFBENCH_PROVIDER_MODULES"
# Seconds one call may take before a provider is failed as too slow, for providers that declare no
# budget of their own (unset: no budget).
BUDGET_ENV = "MFBENCH_CALL_BUDGET_S"


class ProviderUnavailable(Exception):
    """Raised by a provider (or its probe) that cannot run on this machine: it is skipped with the message,
    never failed."""


class ProviderModuleError(Exception):
    """A --provider-module that cannot be loaded, or registers nothing; the message is one line."""


class OverBudget(Exception):
    """One call of a provider took longer than its time budget."""


def _no_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


@dataclass(frozen=True)
class Provider:
    name: str
    description: str
    fn: LookupFn
    exact: bool = True
    # Returns why the provider cannot run on this device and dtype, or None. Static checks only;
    # ``unavailable`` adds a trial run on top.
    requirement: Callable[[torch.device, torch.dtype], str | None] = _no_requirement
    # The files whose change can change this provider's speed or answers (globs from the repository's
    # root); the kernel alert measures the providers a change touches. The registry itself touches all.
    sources: tuple[str, ...] = ("mfbench/lookup.py",)
    baseline: bool = False  # the dense layer every figure is compared with, not a lookup
    collective: bool = False  # needs a torch.distributed process group (torchrun)
    compiles_per_process: bool = False  # compiles afresh in every process: minutes for a process per run
    devices: tuple[str, ...] = ()  # device types it runs on ("cpu", "cuda"); empty: any
    dtypes: tuple[torch.dtype, ...] = ()  # input dtypes it takes; empty: any
    # Why this machine cannot run it at all (a missing library, no GPU of the right kind), or None; an
    # exception raised here is a reason too.
    probe: Callable[[], str | None] | None = None
    budget_s: float | None = None  # seconds one call may take before it is failed as too slow
    origin: str = "built-in"  # "entry point NAME (DIST)", "module PATH": where --repro finds it again
    load_error: str | None = field(default=None, compare=False)  # a plugin that could not be loaded


_REGISTRY: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    if provider.name in _REGISTRY:
        raise ValueError(f"provider {provider.name!r} is registered twice "
                         f"({_REGISTRY[provider.name].origin}, {provider.origin})")
    _REGISTRY[provider.name] = provider
    return provider


def unregister(name: str) -> None:
    """Remove a provider registered at run time (a test's, or a plugin replacing its own); built-ins stay."""
    provider = _REGISTRY.get(name)
    if provider is not None and provider.origin == "built-in":
        raise ValueError(f"provider {name!r} is built in and cannot be unregistered")
    _REGISTRY.pop(name, None)


def register_provider(name: str, fn: LookupFn, *, description: str = "", exact: bool = True,
                      devices: tuple[str, ...] | list[str] = (), dtypes: tuple[torch.dtype, ...] | list = (),
                      probe: Callable[[], str | None] | None = None,
                      requirement: Callable[[torch.device, torch.dtype], str | None] | None = None,
                      sources: tuple[str, ...] = (), budget_s: float | None = None,
                      compiles_per_process: bool = False) -> Provider:
    """Add a Memory Layer implementation to every runner: the layer, block and model matrix (``mfbench run``,
    ``layers``), the float64 check, ``snapshot eval``, the asv suites and the plots.

    ``fn(layer, x)``: ``x`` is (tokens, layer.in_features) in the layer's dtype; return the lookup without
    bias, (tokens, layer.out_features) in ``x``'s dtype, differentiable. ``layer.tables`` (K, 2**tau, out)
    and ``layer.spec`` (tau, weighting, temperature) hold what it needs (``mfbench.lookup`` has the hash
    and the weights). ``exact``: it computes the Memory Layer's function, and is checked against float64;
    False for an approximation (shape and dtype checked only). ``devices`` (device types) and ``dtypes``
    bound where it is measured; ``probe()`` says why this machine cannot run it (None: it can);
    ``requirement(device, dtype)`` the same per device and dtype. ``budget_s``: seconds one call may take
    before it is failed as too slow. ``sources``: globs (from the repository's root) of the files the kernel
    alert should watch for it. ``compiles_per_process``: the asv suites leave it out by default.
    """
    if not isinstance(name, str) or not name or "," in name or name != name.strip():
        raise ValueError(f"a provider name is a non-empty string without commas or edge spaces, got {name!r}")
    if not callable(fn):
        raise TypeError(f"provider {name!r}: fn must be callable, got {type(fn).__name__}")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"provider {name!r}: budget_s must be positive, got {budget_s!r}")
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return register(Provider(name, description or (doc[0] if doc else name), fn, exact=exact,
                             requirement=requirement or _no_requirement, sources=tuple(sources),
                             compiles_per_process=compiles_per_process, devices=tuple(devices),
                             dtypes=tuple(dtypes), probe=probe, budget_s=budget_s, origin=_loading_origin()))


# --- plugins -----------------------------------------------------------------------------------------

_discovered = False
_origin_stack: list[str] = []
_loaded_modules: dict[str, list[str]] = {}  # module spec -> the providers it registered


def _loading_origin() -> str:
    return _origin_stack[-1] if _origin_stack else "register_provider"


def _one_line(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}".strip().rstrip(":")


def _broken(name: str, origin: str, why: str) -> None:
    """A plugin that could not be loaded, as a provider that fails with the reason wherever it is measured."""
    def fail(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(why)

    if name not in _REGISTRY:
        register(Provider(name, f"could not be loaded: {why}", fail, sources=(), origin=origin, load_error=why))
    else:
        logging.getLogger(__name__).warning("mfbench: %s: %s", origin, why)


def _import(spec: str):
    """A module by dotted name, or a .py file by path (kept in sys.modules: torch.compile and pickling
    look functions up by their module)."""
    path = Path(spec)
    if spec.endswith(".py") or os.sep in spec or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"no such file {spec}")
        module_name = "mfbench_provider_" + "".join(c if c.isalnum() else "_" for c in path.stem)
        found = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(found)
        sys.modules[module_name] = module
        try:
            found.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module
    return importlib.import_module(spec)


def load_module(spec: str) -> list[str]:
    """Import ``spec`` (a .py file or a module name) for the providers it registers; their names. Loading
    the same spec again is a no-op. ProviderModuleError (one line) when it fails or registers nothing."""
    _discover()
    key = str(Path(spec).resolve()) if Path(spec).exists() else spec
    if key in _loaded_modules:
        return _loaded_modules[key]
    before = set(_REGISTRY)
    _origin_stack.append(f"module {spec}")
    try:
        _import(spec)
    except (Exception, SystemExit) as exc:  # anything a user's module raises is a one-line answer
        raise ProviderModuleError(f"provider module {spec} could not be loaded: {_one_line(exc)}") from None
    finally:
        _origin_stack.pop()
    added = [n for n in _REGISTRY if n not in before]
    if not added:
        raise ProviderModuleError(f"provider module {spec} registered no provider "
                                  "(call mfbench.register_provider in it)")
    _loaded_modules[key] = added
    return added


def _entry_points() -> list:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _load_entry_point(ep) -> None:
    """An entry point names a module (importing it registers), a function (called with no arguments to
    register) or a ``Provider``."""
    dist = getattr(getattr(ep, "dist", None), "name", None)
    origin = f"entry point {ep.name}" + (f" ({dist})" if dist else "")
    _origin_stack.append(origin)
    try:
        before = set(_REGISTRY)
        obj = ep.load()
        if isinstance(obj, Provider):
            register(obj)
        elif callable(obj) and not isinstance(obj, type):
            obj()
        if not set(_REGISTRY) - before:
            raise ProviderModuleError(f"{ep.value} registered no provider")
    except (Exception, SystemExit) as exc:  # a broken plugin is a failed row, never a crash
        _broken(ep.name, origin, f"plugin {ep.value} could not be loaded: {_one_line(exc)}")
    finally:
        _origin_stack.pop()


def _discover() -> None:
    """Once per process: the ``mfbench.providers`` entry points, then ``MFBENCH_PROVIDER_MODULES``."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a plugin that asks the registry for names while it loads must not recurse
    try:
        found = _entry_points()
    except Exception as exc:  # noqa: BLE001 - broken package metadata must not stop mfbench
        _broken("plugins", f"entry point group {ENTRY_POINT_GROUP}", f"could not be read: {_one_line(exc)}")
        found = []
    for ep in found:
        _load_entry_point(ep)
    for spec in module_specs(os.environ.get(MODULES_ENV, "")):
        try:
            load_module(spec)
        except ProviderModuleError as exc:
            _broken(Path(spec).stem if spec.endswith(".py") else spec, f"module {spec} ({MODULES_ENV})", str(exc))


def module_specs(text: str) -> list[str]:
    """The module specs of a ``MFBENCH_PROVIDER_MODULES`` value: separated by os.pathsep or commas."""
    return [s.strip() for s in text.replace(os.pathsep, ",").split(",") if s.strip()]


def load_errors() -> dict[str, str]:
    """Providers that are plugins which could not be loaded, with why."""
    _discover()
    return {n: p.load_error for n, p in _REGISTRY.items() if p.load_error}


# --- the registry ---------------------------------------------------------------------------------------


def names(exact_only: bool = False) -> list[str]:
    """Registered provider names, in registration order (built-ins first, then plugins)."""
    _discover()
    return [n for n, p in _REGISTRY.items() if p.exact or not exact_only]


def get(name: str) -> Provider:
    _discover()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(_REGISTRY)}") from None


REGISTRY_FILE = "mfbench/providers.py"


def touched_by(files: list[str]) -> list[str]:
    """The providers whose ``sources`` (or the registry) are among ``files`` (paths from the repository's root)."""
    import fnmatch

    if REGISTRY_FILE in files:
        return names()
    _discover()
    return [n for n, p in _REGISTRY.items() if any(fnmatch.fnmatch(f, g) for f in files for g in p.sources)]


def source_globs(plugins: bool = True) -> tuple[str, ...]:
    """Every provider's sources (installed plugins' too, or only the built-ins') and the registry: what the
    kernel alert watches."""
    if plugins:
        _discover()
    chosen = [p for p in _REGISTRY.values() if plugins or p.origin == "built-in"]
    return tuple(dict.fromkeys([g for p in chosen for g in p.sources] + [REGISTRY_FILE]))


def one_process(name: str) -> bool:
    """Whether ``name`` can be measured in a plain process in reasonable time (neither a process group nor
    a compile per process): what the asv suites and the kernel alert measure by default."""
    provider = get(name)
    return not provider.collective and not provider.compiles_per_process


def requirement_unmet(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why this machine cannot run ``name`` at all (no device, no Triton, a device or dtype it does not
    declare, its probe), from static checks only: a provider that meets them but then fails is broken, not
    unavailable."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    provider = get(name)
    if provider.load_error:
        return None  # not a skip: it fails, with the reason (``readiness``)
    if provider.devices and dev.type not in provider.devices:
        return f"runs on {', '.join(provider.devices)} only (declared devices), not {dev.type}"
    if provider.dtypes and dtype not in provider.dtypes:
        return (f"takes {', '.join(str(d).removeprefix('torch.') for d in provider.dtypes)} only (declared "
                f"dtypes), not {str(dtype).removeprefix('torch.')}")
    if provider.probe is not None:
        why = _probed(name)
        if why:
            return why
    return provider.requirement(dev, dtype)


@functools.lru_cache(maxsize=None)
def _probed(name: str) -> str | None:
    try:
        why = get(name).probe()
    except Exception as exc:  # noqa: BLE001 - a probe that raises has answered
        return f"its probe raised {_one_line(exc)}"
    return None if why is None else str(why)


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
    from mfbench.model import MemoryLayer

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
        with _probe_context(name):
            y = within_budget(name, lambda: provider.fn(layer, x))
            wrong = output_problem(y, (tokens, d_out), dtype)
            if wrong:
                return Trial(error=wrong)
            grads = torch.autograd.grad(y, (x, layer.tables), gy, allow_unused=True)  # dense uses no tables
    except Exception as exc:  # any failure here is an answer, never a crash
        reason = _one_line(exc)
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
    from mfbench.layerbench import TOLERANCE, relative_error

    x64 = x.detach().double().requires_grad_()
    t64 = layer.tables.detach().double().requires_grad_()
    ref = reference_lookup(x64, t64, layer.spec)
    want = (ref, *torch.autograd.grad(ref, (x64, t64), gy.double()))
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    for label, got, expected in zip(("y", "grad_x", "grad_tables"), (y, *grads), want):
        err = relative_error(got, expected)
        if not err <= tolerance:
            return (f"float64 check: relative error of {label} {err:.2g} is above the "
                    f"{str(dtype).removeprefix('torch.')} tolerance {tolerance:g}")
    return None


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
    if own is not None:
        return own
    try:
        value = float(os.environ.get(BUDGET_ENV, "") or "nan")
    except ValueError:
        return None
    return value if value > 0 else None


def within_budget(name: str, call: Callable[[], object]) -> object:
    """``call()``, timed once; OverBudget if it took longer than the provider's budget (no budget: just
    the call). The call cannot be stopped midway: a provider that never returns still hangs."""
    limit = budget(name)
    start = time.perf_counter()
    out = call()
    if limit is not None:
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)
        took = time.perf_counter() - start
        if took > limit:
            raise OverBudget(f"one call took {took:.3g} s, over its time budget of {limit:g} s")
    return out


def _probe_context(name: str):
    """The trial run needs no autotuning: it only asks whether the kernels compile and launch."""
    if name == "triton":
        from mfbench.kernels.lookup import untuned

        return untuned()
    import contextlib

    return contextlib.nullcontext()


# --- the providers ---------------------------------------------------------------------------------


def _reference(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
    return reference_lookup(x, layer.tables, layer.spec, layer.max_chunk_bytes)


def _embedding_bag(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
    z = split_chunks(x, layer.spec.tau)
    num_chunks, rows, out_features = layer.tables.shape
    # int32 indices: F.embedding_bag runs 1.6x faster on them than on int64 on a CPU (46 against 74 ms at
    # s = 8192, d = 512, two cores).
    offsets = torch.arange(num_chunks, device=x.device, dtype=torch.int32) * rows
    p = bucket_weight(z, layer.spec.weighting, layer.spec.temperature)
    flat = layer.tables.reshape(num_chunks * rows, out_features)
    return F.embedding_bag(sign_hash(z, torch.int32) + offsets, flat, per_sample_weights=p.to(flat.dtype),
                           mode="sum").to(x.dtype)


# Every (table shape, grad mode, dtype) is a compile of its own; the default matrix needs about a dozen.
# At dynamo's default limit of 8 the later shapes silently ran eagerly (seen on an H200: block and
# model items of `compiled` were the eager reference under another name).
COMPILED_RECOMPILE_LIMIT = 64
COMPILE_FALLBACK_FLAG = "dynamo-recompile-limit-hit: may be eager code"


class _RecompileLimitWatch(logging.Handler):
    """Notices dynamo's 'hit config.recompile_limit' warning for the compiled lookup. Once it has been
    hit, dynamo runs new shapes of that function eagerly for the rest of the process, and says so once."""

    hit = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "recompile_limit" in message and lookup_block.__name__ in message:
            _RecompileLimitWatch.hit = True


def compiled_fell_back() -> bool:
    """True once torch.compile has given up on the compiled lookup in this process (its recompile limit
    was hit): 'compiled' figures measured from then on may be eager code."""
    return _RecompileLimitWatch.hit


def caveats(name: str) -> list[str]:
    """Flags for a figure of provider ``name`` measured now: what may make it something other than the
    provider's own code (so far: ``compiled`` after dynamo gave up on it)."""
    return [COMPILE_FALLBACK_FLAG] if name == "compiled" and compiled_fell_back() else []


@functools.lru_cache(maxsize=None)
def _compiled_block() -> Callable:
    # The whole lookup in one graph lets inductor fuse gather, weighting and sum into one reduction,
    # so unlike the eager reference it needs no token blocking. Donated buffers would forbid the
    # retain_graph=True that repeated backward timings need.
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, COMPILED_RECOMPILE_LIMIT)
    logging.getLogger("torch._dynamo.convert_frame").addHandler(_RecompileLimitWatch(logging.WARNING))
    return torch.compile(lookup_block, dynamic=None)


def _compiled(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
    return _compiled_block()(split_chunks(x, layer.spec.tau), layer.tables, layer.spec).to(x.dtype)


def _compiled_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type == "cpu" and os.environ.get("MFBENCH_SKIP_COMPILE"):
        return "MFBENCH_SKIP_COMPILE is set"
    return None


def _triton(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
    from mfbench.kernels.lookup import memory_lookup

    return memory_lookup(x, layer.tables, layer.spec)


def _triton_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type == "cpu" and not interpreting:
        return "Triton kernels need a CUDA device, or TRITON_INTERPRET=1 (set before import) for the CPU interpreter"
    if device.type == "cuda" and interpreting:
        return "TRITON_INTERPRET=1 runs kernels on CPU tensors only"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton backend for device type {device.type!r}"
    return None


def _sharded(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
    from mfbench.sharded import sharded_lookup

    return sharded_lookup(layer, x)


def _sharded_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    from mfbench.sharded import requirement

    return requirement(device, dtype)


def _dense(layer: "MemoryLayer", x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.dense_weight())


register(Provider("reference", "the PyTorch statement of Eq. 6-11, token-blocked", _reference))
register(Provider("embedding_bag", "hash in torch, then F.embedding_bag with per-sample weights", _embedding_bag))
register(Provider("compiled", "torch.compile of the unblocked reference", _compiled, requirement=_compiled_requirement,
                  compiles_per_process=True))
register(Provider("triton", "fused Triton kernels (mfbench.kernels.lookup)", _triton, requirement=_triton_requirement,
                  sources=("mfbench/kernels/*", "mfbench/lookup.py")))
register(Provider("sharded", "chunk tables split over torch.distributed ranks, partial sums all-reduced "
                  "(mfbench.sharded)", _sharded, requirement=_sharded_requirement, collective=True))
register(Provider("dense", "the nn.Linear(in, out) the Memory Layer replaces (baseline)", _dense, exact=False,
                  sources=(), baseline=True))
