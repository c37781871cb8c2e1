"""The one registry of Memory Layer implementations ("providers"); ``mfbench.core.providers`` is the
module runners and plugins use (this registry's API, and whether a provider runs here).

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
is ``failed`` with the one-line reason (``mfbench.core.providers.readiness``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import torch

from mfbench.config import settings
from mfbench.core import builtins

# A provider's layer is a mfbench.core.model.MemoryLayer (tables, spec, max_chunk_bytes, dense_weight());
# the registry sits below the model, which looks providers up here.
Layer = torch.nn.Module


LookupFn = Callable[[Layer, torch.Tensor], torch.Tensor]
ENTRY_POINT_GROUP = "mfbench.providers"
MODULES_ENV = "MFBENCH_PROVIDER_MODULES"


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
    sources: tuple[str, ...] = ("mfbench/core/lookup.py",)
    baseline: bool = False  # the dense layer every figure is compared with, not a lookup
    collective: bool = False  # needs a torch.distributed process group (torchrun)
    compiles_per_process: bool = False  # compiles afresh in every process: minutes for a process per run
    devices: tuple[str, ...] = ()  # device types it runs on ("cpu", "cuda"); empty: any
    dtypes: tuple[torch.dtype, ...] = ()  # input dtypes it takes; empty: any
    # Why this machine cannot run it at all (a missing library, no GPU of the right kind), or None; an
    # exception raised here is a reason too.
    probe: Callable[[], str | None] | None = None
    budget_s: float | None = None  # seconds one call may take before it is failed as too slow
    reference: bool = False  # the PyTorch statement of the lookup: what accuracy is measured against first
    autotuned: bool = False  # its kernels pick a configuration per shape; the kernels' time targets are its
    untuned: Callable[[], ContextManager] | None = None  # a context without autotuning, for the trial run
    last_config: Callable[[str], str | None] | None = None  # the configuration its last call in a direction took
    caveats: Callable[[], list[str]] | None = None  # flags for a figure measured now (what it may really be)
    # Rough cost per unit of work by device type, for balancing a distributed run's shares (1 if absent).
    cost: tuple[tuple[str, float], ...] = ()
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
    and ``layer.spec`` (tau, weighting, temperature) hold what it needs (``mfbench.core.lookup`` has the hash
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


def one_line(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}".strip().rstrip(":")


def _broken(name: str, origin: str, why: str) -> None:
    """A plugin that could not be loaded, as a provider that fails with the reason wherever it is measured."""
    def fail(layer: Layer, x: torch.Tensor) -> torch.Tensor:
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
        raise ProviderModuleError(f"provider module {spec} could not be loaded: {one_line(exc)}") from None
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
        _broken(ep.name, origin, f"plugin {ep.value} could not be loaded: {one_line(exc)}")
    finally:
        _origin_stack.pop()


def _discover() -> None:
    """Once per process: the ``mfbench.providers`` entry points, then ``MFBENCH_PROVIDER_MODULES``."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a plugin that asks the registry for names while it loads must not recurse
    try:
        found = _entry_points() if settings().plugins else []
    except Exception as exc:  # noqa: BLE001 - broken package metadata must not stop mfbench
        _broken("plugins", f"entry point group {ENTRY_POINT_GROUP}", f"could not be read: {one_line(exc)}")
        found = []
    for ep in found:
        _load_entry_point(ep)
    for spec in module_specs(settings().provider_modules):
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


REGISTRY_FILES = ("mfbench/core/registry.py", "mfbench/core/builtins.py")


def touched_by(files: list[str]) -> list[str]:
    """The providers whose ``sources`` (or the registry) are among ``files`` (paths from the repository's root)."""
    import fnmatch

    if set(REGISTRY_FILES) & set(files):
        return names()
    _discover()
    return [n for n, p in _REGISTRY.items() if any(fnmatch.fnmatch(f, g) for f in files for g in p.sources)]


def source_globs(plugins: bool = True) -> tuple[str, ...]:
    """Every provider's sources (installed plugins' too, or only the built-ins') and the registry: what the
    kernel alert watches."""
    if plugins:
        _discover()
    chosen = [p for p in _REGISTRY.values() if plugins or p.origin == "built-in"]
    return tuple(dict.fromkeys([g for p in chosen for g in p.sources] + list(REGISTRY_FILES)))


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
        return f"its probe raised {one_line(exc)}"
    return None if why is None else str(why)




def baseline() -> str:
    """The name of the provider every figure is compared with (the dense layer)."""
    return next(n for n, p in _REGISTRY.items() if p.baseline)


def reference() -> str:
    """The name of the reference provider (the PyTorch statement every other is checked against)."""
    return next(n for n, p in _REGISTRY.items() if p.reference)


def caveats(name: str) -> list[str]:
    """Flags for a figure of provider ``name`` measured now: what may make it something other than the
    provider's own code (so far: ``compiled`` after dynamo gave up on it)."""
    provider = get(name)
    return provider.caveats() if provider.caveats is not None else []


def cost_factor(name: str, device_type: str) -> float:
    return dict(get(name).cost).get(device_type, 1.0)


# --- the built-in providers (mfbench.core.builtins) ------------------------------------------------------

register(Provider("reference", "the PyTorch statement of Eq. 6-11, token-blocked", builtins.reference, reference=True))
register(Provider("embedding_bag", "hash in torch, then F.embedding_bag with per-sample weights", builtins.embedding_bag))
# torch.compile compiles afresh for every shape; the CPU interpreter runs Triton a program at a time
register(Provider("compiled", "torch.compile of the unblocked reference", builtins.compiled,
                  requirement=builtins.compiled_requirement, compiles_per_process=True, caveats=builtins.compiled_caveats,
                  cost=(("cpu", 10.0), ("cuda", 8.0))))
register(Provider("triton", "fused Triton kernels (mfbench.kernels.lookup)", builtins.triton,
                  requirement=builtins.triton_requirement, sources=("mfbench/kernels/*", "mfbench/core/lookup.py"),
                  autotuned=True, untuned=builtins.triton_untuned, last_config=builtins.triton_config,
                  cost=(("cpu", 30.0),)))
register(Provider("sharded", "chunk tables split over torch.distributed ranks, partial sums all-reduced "
                  "(mfbench.core.sharded)", builtins.sharded, requirement=builtins.sharded_requirement, collective=True))
register(Provider("dense", "the nn.Linear(in, out) the Memory Layer replaces (baseline)", builtins.dense, exact=False,
                  sources=(), baseline=True))


def is_baseline(name: str) -> bool:
    """Whether ``name`` is the baseline; False for a name this process has not registered (a row's, say)."""
    _discover()
    provider = _REGISTRY.get(name)
    return provider is not None and provider.baseline
