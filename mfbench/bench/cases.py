"""What a run measures: items of (benchmark x direction x sequence length x provider x dtype), planned
from a preset.

Benchmarks: ``layer`` (one Memory Layer module d -> d, or the nn.Linear it replaces), ``block``
(MemoryFormerBlock or the dense block), ``model`` (the whole LM) and ``layer-kernel`` (a provider's own
call on a Memory Layer of a given shape, no module around it: the kernels at the shapes of their targets,
what ``mfbench layers`` measures). Decoding (the ``decode`` preset): ``decode-layer`` (a layer-kernel call
at B tokens, one per sequence of a batch) and ``decode-model`` (one generation step of the whole LM, B
sequences of one new token each after a key/value cache of L tokens). For blocks and models the baseline provider means the dense
architecture; every other provider runs the MemoryFormer with its Memory Layers on that provider.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import torch

from mfbench.core import providers
from mfbench.core.model import ModelConfig
from mfbench.store.results import short_direction

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BENCHMARKS = ("layer", "block", "model")  # what `mfbench run --benchmarks` chooses from
KERNEL = "layer-kernel"
DECODE_LAYER, DECODE_MODEL = "decode-layer", "decode-model"  # `--benchmarks layer|model` of the decode preset
DECODE_BENCHMARKS = (DECODE_LAYER, DECODE_MODEL)
LAYER_BENCHMARKS = ("layer", KERNEL, DECODE_LAYER)  # one Memory Layer a call: its bytes, floor and budget


@dataclass(frozen=True)
class Case:
    """A Memory Layer's shape and direction, for ``layer-kernel`` items (``target_ms``: the kernels' goal)."""

    direction: str
    tokens: int
    in_features: int
    out_features: int
    tau: int = 8
    weighting: str = "paper"
    target_ms: float | None = None

    @property
    def name(self) -> str:
        return f"{short_direction(self.direction)} s={self.tokens} d={self.in_features} h={self.out_features} tau={self.tau}"


CASES: dict[str, list[Case]] = {
    # The shapes of the kernels-v2 issue (fp16, tau = 8). A target is the issue's own where it set one,
    # else the authors' released CUDA kernels' time on the H200 (../shared/MEMORYFORMER.md; their hash
    # not included, ours is).
    "gpu": [
        Case("forward", 2048, 2048, 2048, target_ms=0.20),
        Case("forward", 8192, 2048, 2048, target_ms=1.47),
        Case("forward", 32768, 512, 512, target_ms=0.299),
        Case("forward", 32768, 2048, 2048, target_ms=6.66),
        Case("forward", 2048, 512, 512, target_ms=0.029),
        Case("backward", 2048, 2048, 2048, target_ms=0.5),
        Case("backward", 32768, 512, 512, target_ms=1.0),
        Case("backward", 2048, 512, 512, target_ms=0.150),
    ],
    # MemoryFormer-base's own layers at s = 2048: Q/K/V (d -> 3d, hashed once), Memory Block 1 and 2.
    "paper": [
        Case("forward", 2048, 1024, 3072), Case("forward", 2048, 1024, 1280),
        Case("forward", 2048, 1280, 1024, tau=10),
        Case("backward", 2048, 1024, 3072), Case("backward", 2048, 1280, 1024, tau=10),
    ],
    # The last: issue 18's CPU shape, where the answer (lookup against dense) depends on the CPU model.
    "cpu": [
        Case("forward", 2048, 512, 512), Case("backward", 2048, 512, 512), Case("forward", 8192, 512, 512),
    ],
    "smoke": [Case("forward", 256, 64, 64), Case("backward", 256, 64, 64)],
}


def decode_cases(widths: Iterable[int], models: Iterable[str], batches: Iterable[int]) -> list[Case]:
    """Forward Memory Layers at ``batches`` tokens: d = h for each of ``widths`` (tau = 8), then each model
    preset's widest Memory Layer, its Q/K/V (d -> 3d, hashed once)."""
    shapes = [(d, d, 8) for d in widths]
    for name in models:
        cfg = ModelConfig.preset(name)
        shapes.append((cfg.d_model, 3 * cfg.d_model, cfg.tau))
    return [Case("forward", b, i, o, tau) for i, o, tau in dict.fromkeys(shapes) for b in batches]


# Nsight Compute's cases of decoding (`mfbench profile --cases decode`): the ends of the layer widths, at and
# around the analytic break-even batch B = tau.
CASES["decode"] = decode_cases((2048, 8192), (), (1, 8))


def with_weighting(cases: Iterable[Case], weighting: str) -> list[Case]:
    return [replace(c, weighting=weighting) for c in cases]


@dataclass(frozen=True)
class Item:
    """One entry of a run's matrix: the one type every measuring path (run, layers, asv, probe) takes.

    ``cfg`` is the model config of layer, block and model items; ``case`` the shape of a layer-kernel item,
    whose ``seed`` draws its input."""

    benchmark: str
    direction: str  # forward, backward, or train (one optimiser step of a model)
    seq: int
    provider: str
    dtype: torch.dtype
    cfg: ModelConfig | None = None
    case: Case | None = None
    seed: int = 0
    cache: int = 0  # a decode-model step's past tokens per sequence (its key/value cache)

    @classmethod
    def kernel(cls, case: Case, provider: str, dtype: torch.dtype, seed: int = 0) -> "Item":
        return cls(KERNEL, case.direction, case.tokens, provider, dtype, case=case, seed=seed)

    @classmethod
    def decode_layer(cls, case: Case, provider: str, dtype: torch.dtype, seed: int = 0) -> "Item":
        return cls(DECODE_LAYER, case.direction, case.tokens, provider, dtype, case=case, seed=seed)

    @property
    def label(self) -> str:
        if self.benchmark in DECODE_BENCHMARKS:
            shape = self.case.name if self.case is not None else f"{self.cfg.name} B={self.seq} L={self.cache}"
            return f"{self.benchmark} {shape:<34} {self.provider}"
        if self.case is not None:
            return f"{self.case.name:<40} {self.provider}"
        return f"{self.benchmark:<5} {short_direction(self.direction)} s={self.seq:<6} {self.provider}"

    @property
    def shape(self) -> tuple[int, int, int, str]:
        """(in_features, out_features, tau, weighting) of the item's Memory Layer, or of each of its layers."""
        if self.case is not None:
            return self.case.in_features, self.case.out_features, self.case.tau, self.case.weighting
        return self.cfg.d_model, self.cfg.d_model, self.cfg.tau, self.cfg.weighting

    def params(self) -> dict:
        """The row parameters: a layer-kernel item's shape, or the model config's."""
        dtype = str(self.dtype).removeprefix("torch.")
        if self.case is not None:
            c = self.case
            return {"direction": c.direction, "tokens": c.tokens, "in_features": c.in_features,
                    "out_features": c.out_features, "tau": c.tau, "weighting": c.weighting, "dtype": dtype,
                    **({"target_ms": c.target_ms} if c.target_ms is not None else {})}
        cfg = self.cfg
        if self.benchmark == DECODE_MODEL:  # B sequences of one new token: B tokens a step
            return {"preset": cfg.name, "d": cfg.d_model, "tau": cfg.tau, "weighting": cfg.weighting,
                    "tokens": self.seq, "batch": self.seq, "cache": self.cache, "direction": self.direction,
                    "dtype": dtype}
        return {"preset": cfg.name, "d": cfg.d_model, "tau": cfg.tau, "weighting": cfg.weighting, "seq": self.seq,
                "batch": 1, "direction": self.direction, "dtype": dtype}


@dataclass(frozen=True)
class Decode:
    """What the decode preset measures besides its batches (the preset's ``seqs``), by device type: the
    widths d = h of its single layers, the model presets (their layers' shapes, and their generation
    steps) and the key/value cache lengths of the steps."""

    widths: dict[str, tuple[int, ...]]
    models: dict[str, tuple[str, ...]]
    caches: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Preset:
    model: str
    seqs: dict[str, tuple[int, ...]]  # by device type; the decode preset's: tokens a step (batch B)
    items: tuple[tuple[str, str], ...]  # (benchmark, direction)
    energy_seconds: float = 1.0  # the energy window of each item; 0: no energy figures
    decode: Decode | None = None


PRESETS: dict[str, Preset] = {
    "smoke": Preset("micro", {"cpu": (64,), "cuda": (256,)},
                    (("layer", "forward"), ("layer", "backward"), ("block", "forward"), ("model", "forward")), 0.5),
    "default": Preset("tiny", {"cpu": (256, 1024), "cuda": (2048, 8192)},
                      (("layer", "forward"), ("layer", "backward"), ("block", "forward"), ("block", "backward"),
                       ("model", "forward"))),
    "paper": Preset("base", {"cpu": (2048,), "cuda": (2048,)},
                    (("layer", "forward"), ("layer", "backward"), ("block", "forward"), ("block", "backward"),
                     ("model", "forward"))),
    # Decoding, where the lookup reads fewer bytes than dense (B < tau). The CPU's matrix is issue 27's CPU
    # side: the widths 1024-4096 at B = 1-8, and the tiny model's step.
    "decode": Preset("tiny", {"cpu": (1, 2, 4, 8), "cuda": (1, 2, 4, 8, 16, 32, 64)},
                     ((DECODE_LAYER, "forward"), (DECODE_MODEL, "forward")), 0.25,
                     Decode({"cpu": (1024, 2048, 4096), "cuda": (1024, 2048, 4096, 8192)},
                            {"cpu": ("tiny",), "cuda": ("tiny", "small", "base")},
                            {"cpu": (512,), "cuda": (512, 2048)})),
}


def plan(preset: Preset, device: torch.device, names: Iterable[str], seqs: Iterable[int] | None,
         dtype: torch.dtype, benchmarks: Iterable[str] | None = None, weighting: str = "paper") -> list[Item]:
    """A preset's items for ``device``, at its own lengths or ``seqs`` (the decode preset's: batches).
    ``benchmarks`` names them as ``--benchmarks`` does: ``layer`` and ``model`` choose the decode
    preset's ``decode-layer`` and ``decode-model``."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    seqs = tuple(seqs) if seqs else preset.seqs[kind]
    wanted = set(benchmarks or BENCHMARKS)
    chosen = [(b, d) for b, d in preset.items if b in wanted or b.removeprefix("decode-") in wanted]
    names = list(names)
    if preset.decode is None:
        cfg = ModelConfig.preset(preset.model, weighting=weighting)
        return [Item(b, d, s, p, dtype, cfg=cfg) for b, d in chosen for s in seqs for p in names]
    dec, items = preset.decode, []
    for b, _ in chosen:
        if b == DECODE_LAYER:
            layers = with_weighting(decode_cases(dec.widths[kind], dec.models[kind], seqs), weighting)
            items += [Item.decode_layer(c, p, dtype, i) for i, c in enumerate(layers) for p in names]
        else:
            items += [Item(DECODE_MODEL, "forward", s, p, dtype, cfg=ModelConfig.preset(m, weighting=weighting), cache=L)
                      for m in dec.models[kind] for L in dec.caches[kind] for s in seqs for p in names]
    return items


SUITE_CACHE = 512  # the asv decode suite's key/value cache


def suite_item(benchmark: str, direction: str, seq: int, provider: str, dtype: torch.dtype, cfg: ModelConfig) -> Item:
    """The item of an asv parameter set at the preset ``cfg``: for ``decode-layer`` a forward Memory Layer
    d -> d of its width at ``seq`` tokens, for ``decode-model`` its step of ``seq`` sequences after
    ``SUITE_CACHE`` cached tokens; else its layer, block or model."""
    if benchmark == DECODE_LAYER:
        return Item.decode_layer(Case("forward", seq, cfg.d_model, cfg.d_model, cfg.tau, cfg.weighting), provider, dtype)
    return Item(benchmark, direction, seq, provider, dtype, cfg=cfg, cache=SUITE_CACHE if benchmark == DECODE_MODEL else 0)


def kernel_plan(cases: Iterable[Case], names: Iterable[str], dtype: torch.dtype, seed: int = 0) -> list[Item]:
    """Layer-kernel items, case by case: every provider of a case draws the same input (seed + case index)."""
    names = list(names)
    return [Item.kernel(case, name, dtype, seed + i) for i, case in enumerate(cases) for name in names]


BENCHMARK_COST = {"layer": 1.0, "block": 4.0, "model": 24.0, KERNEL: 1.0, DECODE_LAYER: 1.0, DECODE_MODEL: 24.0}


def cost_estimate(item: Item, device: torch.device) -> float:
    """A rough, deterministic cost of measuring ``item`` (only ever compared with other items' costs)."""
    factor = providers.cost_factor(item.provider, device.type)  # rough factors from the runs in results/
    # Mostly a fixed part per item (build, warm-up, timing, a 1 s energy window, a memory pass), plus a
    # smaller part that grows with the work.
    work = BENCHMARK_COST[item.benchmark] * (3.0 if item.direction == "backward" else 1.0) * item.seq / 2048
    return factor * (1.0 + 0.05 * work)
