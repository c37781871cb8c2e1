"""What an item times: the module and input it builds, and the one function from a direction to the call.

Every measuring path (``mfbench run`` and ``layers``, the asv suites, the kernel probe, the profiler)
builds its call here, so a forward, a backward and a training step mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mfbench.bench.cases import DECODE_MODEL, Case, Item
from mfbench.core import providers
from mfbench.core.builtins import keep_compiled_graphs
from mfbench.core.model import DenseBlock, KVCache, MemoryFormerBlock, MemoryLayer
from mfbench.core.model import build as build_lm


@dataclass
class Subject:
    """A built item: ``forward(x)`` is what a call computes; ``module`` holds the parameters a backward or a
    training step differentiates; ``gy`` the output's gradient a backward uses (random where None)."""

    module: torch.nn.Module
    x: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]
    gy: torch.Tensor | None = None


def make_layer(case: Case, provider: str, device: torch.device, dtype: torch.dtype) -> MemoryLayer:
    with torch.device(device):  # initialised where it lives: d = 8192's tables are 2.1G values
        layer = MemoryLayer(case.in_features, case.out_features, case.tau, weighting=case.weighting, bias=False,
                            provider=provider)
    return layer.to(dtype=dtype)


def random_input(case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh normal x (tokens, in) and dL/dy (tokens, out): never zeros, which hide unwritten output."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(case.tokens, case.in_features, device=device, dtype=dtype, generator=g)
    gy = torch.randn(case.tokens, case.out_features, device=device, dtype=dtype, generator=g)
    return x, gy


def build(item: Item, device: torch.device) -> Subject:
    """The module and input ``item`` measures, on ``device`` in the item's dtype.

    A layer-kernel item calls its provider's own function on a bias-free layer; for blocks and models the
    baseline provider means the dense architecture, every other provider the MemoryFormer with all its
    Memory Layers on that provider."""
    if item.case is not None:
        layer = make_layer(item.case, item.provider, device, item.dtype)
        x, gy = random_input(item.case, device, item.dtype, item.seed)
        fn = providers.get(item.provider).fn
        return Subject(layer, x, lambda inp: fn(layer, inp), gy)
    cfg = item.cfg
    dense = providers.get(item.provider).baseline
    # Parameters are initialised where they will live: a tiny MemoryFormer has 467M of them, 8 s of
    # CPU random-number work on two cores, paid again by every benchmark process.
    with torch.device(device):
        if item.benchmark == "layer":  # a decode-layer item has a case: the branch above
            module = MemoryLayer(cfg.d_model, cfg.d_model, cfg.tau, cfg.temperature, cfg.weighting,
                                 provider=item.provider)
        elif item.benchmark == "block":
            module = DenseBlock(cfg) if dense else MemoryFormerBlock(cfg)
        else:
            module = build_lm("dense" if dense else "memoryformer", cfg)
    module = module.to(dtype=item.dtype)
    if not dense or item.benchmark == "layer":
        for m in module.modules():
            if isinstance(m, MemoryLayer):
                m.provider = item.provider
    if item.benchmark == DECODE_MODEL:
        return decode_step(module, item, device)
    if item.benchmark == "model":
        x = torch.randint(0, cfg.vocab_size, (1, item.seq), device=device)
    else:
        shape = (item.seq, cfg.d_model) if item.benchmark == "layer" else (1, item.seq, cfg.d_model)
        x = torch.randn(*shape, device=device, dtype=item.dtype)
    return Subject(module, x, module)


def decode_step(model: torch.nn.Module, item: Item, device: torch.device) -> Subject:
    """One generation step of ``model``: B = item.seq sequences, one new token each, after a key/value cache
    of ``item.cache`` tokens. The cache is filled with random keys and values (what they hold does not
    change the work) and is not advanced, so every call is the same step."""
    cfg = model.cfg
    g = torch.Generator(device=device).manual_seed(item.seed)
    cache = KVCache.empty(cfg, item.seq, item.cache + 1, device, item.dtype)
    for t in cache.keys + cache.values:
        t[:, :, :item.cache].normal_(generator=g)
    cache.length = item.cache
    x = torch.randint(0, cfg.vocab_size, (item.seq, 1), device=device, generator=g)
    return Subject(model, x, lambda idx: model.step(idx, cache, advance=False))


def callable_for(direction: str, subject: Subject) -> Callable[[], object]:
    """The call a direction times: a no-grad forward; a backward of one forward kept for repeated calls (to
    the input where it is floating point, and every parameter); or one AdamW step of a language model on
    next-token loss. Under ``torch.cuda.stream(s)`` the forward, and so its backward, runs on ``s`` (graph
    capture needs it)."""
    module, x, forward = subject.module, subject.x, subject.forward
    if direction == "forward":
        def call() -> object:
            with torch.no_grad():
                return forward(x)
        return call
    if direction == "train":
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step() -> None:
            logits = forward(x)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    if direction != "backward":
        raise ValueError(f"unknown direction {direction!r}; forward, backward or train")
    keep_compiled_graphs()  # a torch.compile'd provider (a plugin's too) would refuse the repeated calls
    inputs = [x.detach().requires_grad_()] if x.is_floating_point() else [x]
    params = [p for p in module.parameters() if p.requires_grad]
    y = forward(inputs[0])
    gy = subject.gy if subject.gy is not None else torch.randn_like(y)
    wrt = (inputs if x.is_floating_point() else []) + params

    def backward() -> object:
        return torch.autograd.grad(y, wrt, gy, retain_graph=True, allow_unused=True)
    return backward


def prepare(item: Item, device: torch.device) -> Callable[[], object]:
    """A fresh build of ``item`` and its call."""
    return callable_for(item.direction, build(item, device))


def prepare_on_stream(item: Item, device: torch.device) -> tuple[Callable[[], object], object]:
    """(call, stream) of a fresh build of ``item``: on a GPU built on a side stream of its own, so that a
    backward (which replays on the stream of its forward) can be captured in a CUDA graph there."""
    if device.type != "cuda":
        return prepare(item, device), None
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        fn = prepare(item, device)
    return fn, stream
