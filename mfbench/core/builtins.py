"""The built-in Memory Layer implementations; ``mfbench.core.providers`` registers them.

Each ``fn(layer, x)`` maps x (tokens, in_features) to the lookup without bias, in x's dtype; each
``*_requirement(device, dtype)`` says why it cannot run there, or None.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from mfbench.config import settings
from mfbench.core.lookup import bucket_weight, lookup_block, reference_lookup, sign_hash, split_chunks

# A mfbench.core.model.MemoryLayer; the model looks providers up in the registry, which sits below it.
Layer = torch.nn.Module



def reference(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    return reference_lookup(x, layer.tables, layer.spec, layer.max_chunk_bytes)


def embedding_bag(layer: Layer, x: torch.Tensor) -> torch.Tensor:
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


class RecompileLimitWatch(logging.Handler):
    """Notices dynamo's 'hit config.recompile_limit' warning for the compiled lookup. Once it has been
    hit, dynamo runs new shapes of that function eagerly for the rest of the process, and says so once."""

    hit = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "recompile_limit" in message and lookup_block.__name__ in message:
            RecompileLimitWatch.hit = True


def compiled_fell_back() -> bool:
    """True once torch.compile has given up on the compiled lookup in this process (its recompile limit
    was hit): 'compiled' figures measured from then on may be eager code."""
    return RecompileLimitWatch.hit


def compiled_caveats() -> list[str]:
    """The flags of a ``compiled`` figure measured now: eager code may stand in for it once dynamo gave up."""
    return [COMPILE_FALLBACK_FLAG] if compiled_fell_back() else []


def keep_compiled_graphs() -> None:
    """Let a torch.compile'd backward run again on the graph it kept (``retain_graph=True``, as repeated
    backward timings call it), for the rest of the process. By default AOTAutograd donates the buffers it
    saved for the backward, and then refuses any backward that keeps the graph ("compiled with non-empty
    donated buffers which requires create_graph=False and retain_graph=False"): seen on an H200 with torch
    2.11 for every backward of a plugin's torch.compile'd provider. Read when a graph compiles and again at
    each backward, so set before either. A torch without the setting (2.13 has none) has no such refusal."""
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False


@functools.lru_cache(maxsize=None)
def compiled_block() -> Callable:
    # The whole lookup in one graph lets inductor fuse gather, weighting and sum into one reduction,
    # so unlike the eager reference it needs no token blocking.
    import torch._dynamo.config as dynamo_config

    keep_compiled_graphs()
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, COMPILED_RECOMPILE_LIMIT)
    logging.getLogger("torch._dynamo.convert_frame").addHandler(RecompileLimitWatch(logging.WARNING))
    return torch.compile(lookup_block, dynamic=None)


def compiled(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    return compiled_block()(split_chunks(x, layer.spec.tau), layer.tables, layer.spec).to(x.dtype)


def compiled_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type == "cpu" and settings().skip_compile:
        return "MFBENCH_SKIP_COMPILE is set"
    return None


def triton(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    from mfbench.kernels.lookup_grad import memory_lookup

    return memory_lookup(x, layer.tables, layer.spec)


def triton_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
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


def sharded(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    from mfbench.core.sharded import sharded_lookup

    return sharded_lookup(layer, x)


def sharded_requirement(device: torch.device, dtype: torch.dtype) -> str | None:
    from mfbench.core.sharded import requirement

    return requirement(device, dtype)


def dense(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.dense_weight())




def triton_untuned() -> ContextManager:
    """The Triton kernels with autotuning off: a trial run only asks whether they compile and launch."""
    from mfbench.kernels.lookup import untuned

    return untuned()


def triton_config(direction: str) -> str | None:
    """The configuration the autotuner chose for the last Triton call in ``direction``."""
    from mfbench.kernels.lookup_grad import last_config

    return last_config(direction)
