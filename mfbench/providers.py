"""The one registry of Memory Layer implementations ("providers").

Every runner (the model, the kernel benchmark, the asv suites, the CLI, the tests) picks implementations
here and nowhere else. A provider maps ``(layer, x)`` with ``x`` of shape (tokens, in_features) to the
layer's output without bias, and supports autograd. ``exact`` providers compute the Memory Layer's own
function; ``dense`` is the ``nn.Linear`` the layer replaces, the baseline every figure is compared with.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from mfbench.lookup import _lookup_block, bucket_weight, reference_lookup, sign_hash, split_chunks

if TYPE_CHECKING:
    from mfbench.model import MemoryLayer

LookupFn = Callable[["MemoryLayer", torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Provider:
    name: str
    description: str
    fn: LookupFn
    exact: bool = True
    # Returns why the provider cannot run on this device and dtype, or None. Static checks only;
    # ``unavailable`` adds a trial run on top.
    requirement: Callable[[torch.device, torch.dtype], str | None] = lambda device, dtype: None
    # The files whose change can change this provider's speed or answers (globs from the repository's
    # root); the kernel alert measures the providers a change touches. The registry itself touches all.
    sources: tuple[str, ...] = ("mfbench/lookup.py",)
    baseline: bool = False  # the dense layer every figure is compared with, not a lookup
    collective: bool = False  # needs a torch.distributed process group (torchrun)
    compiles_per_process: bool = False  # compiles afresh in every process: minutes for a process per run


_REGISTRY: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    if provider.name in _REGISTRY:
        raise ValueError(f"provider {provider.name!r} is registered twice")
    _REGISTRY[provider.name] = provider
    return provider


def names(exact_only: bool = False) -> list[str]:
    """Registered provider names, in registration order."""
    return [n for n, p in _REGISTRY.items() if p.exact or not exact_only]


def get(name: str) -> Provider:
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
    return [n for n, p in _REGISTRY.items() if any(fnmatch.fnmatch(f, g) for f in files for g in p.sources)]


def source_globs() -> tuple[str, ...]:
    """Every provider's sources and the registry: what the kernel alert watches."""
    return tuple(dict.fromkeys([g for p in _REGISTRY.values() for g in p.sources] + [REGISTRY_FILE]))


def one_process(name: str) -> bool:
    """Whether ``name`` can be measured in a plain process in reasonable time (neither a process group nor
    a compile per process): what the asv suites and the kernel alert measure by default."""
    provider = get(name)
    return not provider.collective and not provider.compiles_per_process


def requirement_unmet(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why this machine cannot run ``name`` at all (no device, no Triton, ...), from static checks only: a
    provider that meets them but then fails is broken, not unavailable."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return get(name).requirement(dev, dtype)


@functools.lru_cache(maxsize=None)
def unavailable(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why ``name`` cannot run on ``device`` with ``dtype`` (None if it can): the static requirement, then
    a trial run (``trial_failure``), so a compile or launch failure is a reason rather than a crash later."""
    return requirement_unmet(name, device, dtype) or trial_failure(name, device, dtype)


@functools.lru_cache(maxsize=None)
def trial_failure(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """How a tiny layer fails through ``name``, forward and backward (None if it runs)."""
    from mfbench.model import MemoryLayer

    dev = torch.device(device)
    try:
        layer = MemoryLayer(16, 24, tau=8, provider=name).to(device=dev, dtype=dtype)
        x = torch.randn(5, 16, device=dev, dtype=dtype, requires_grad=True)
        with _probe_context(name):
            layer(x).sum().backward()
    except Exception as exc:  # any failure here is an answer, never a crash
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


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
    offsets = torch.arange(num_chunks, device=x.device) * rows
    p = bucket_weight(z, layer.spec.weighting, layer.spec.temperature)
    flat = layer.tables.reshape(num_chunks * rows, out_features)
    return F.embedding_bag(sign_hash(z) + offsets, flat, per_sample_weights=p.to(flat.dtype), mode="sum").to(x.dtype)


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
        if "recompile_limit" in message and _lookup_block.__name__ in message:
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
    return torch.compile(_lookup_block, dynamic=None)


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
