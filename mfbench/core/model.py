"""MemoryFormer (Ding et al., NeurIPS 2024) and the Pythia-style dense transformer it is compared with.

Read top to bottom against the paper: ``MemoryLayer`` is Eq. 2-11, ``MemoryFormerBlock`` Eq. 13 with the
Memory Block, ``MemoryFormerLM`` stacks them under a dense LM head. Where the authors' released code
differs from the paper, the switch is named (``weighting``) and the default is the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfbench.core import registry
from mfbench.core.lookup import DEFAULT_CHUNK_BYTES, LookupSpec, check_input, check_positive_integer, checks_enabled

# The released code initialises the tables as 0.02 * randn.
TABLE_INIT_STD = 0.02


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    vocab_size: int = 50304
    n_layer: int = 6
    d_model: int = 512
    n_head: int = 8
    tau: int = 8
    temperature: float = 1.0
    weighting: str = "paper"
    rotary_pct: float = 0.25  # share of each head's dims that get rotary embeddings (Pythia, released code)
    provider: str = "reference"

    def __post_init__(self) -> None:
        for f in ("vocab_size", "n_layer", "d_model", "n_head"):
            check_positive_integer(f, getattr(self, f))
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        LookupSpec(self.tau, self.weighting, self.temperature)  # validates tau, weighting, temperature
        if self.d_model % self.tau:
            raise ValueError(f"d_model={self.d_model} is not divisible by tau={self.tau}")
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must lie in [0, 1], got {self.rotary_pct!r}")
        registry.get(self.provider)

    @property
    def num_chunks(self) -> int:
        """K = d / tau, the number of hash tables per Memory Layer on d-wide input."""
        return self.d_model // self.tau

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "ModelConfig":
        """``micro`` (for tests) or the paper's ``tiny``/``small``/``base`` (Pythia-70M/160M/410M shapes)."""
        try:
            base = PRESETS[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return replace(base, **overrides)


PRESETS: dict[str, ModelConfig] = {
    "micro": ModelConfig("micro", vocab_size=256, n_layer=2, d_model=64, n_head=2),
    "tiny": ModelConfig("tiny", n_layer=6, d_model=512, n_head=8),
    "small": ModelConfig("small", n_layer=12, d_model=768, n_head=12),
    "base": ModelConfig("base", n_layer=24, d_model=1024, n_head=16),
}


class MemoryLayer(nn.Module):
    """A hash-table lookup in place of ``nn.Linear(in_features, out_features)`` (Eq. 2-11).

    ``tables[k]`` is T_k, with one row of width ``out_features`` per sign pattern of chunk k. The lookup
    itself is done by the selected provider (``mfbench.core.registry``); ``layer.provider = NAME`` switches.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        tau: int = 8,
        temperature: float = 1.0,
        weighting: str = "paper",
        bias: bool = True,
        provider: str = "reference",
        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        self.spec = LookupSpec(tau, weighting, temperature)
        for label, value in (("in_features", in_features), ("out_features", out_features)):
            check_positive_integer(label, value)
        if in_features % tau:
            raise ValueError(f"in_features={in_features} is not divisible by tau={tau}")
        self.in_features, self.out_features = in_features, out_features
        self.num_chunks = in_features // tau
        self.max_chunk_bytes = max_chunk_bytes
        self.tables = nn.Parameter(torch.randn(self.num_chunks, self.spec.rows, out_features) * TABLE_INIT_STD)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.dense: nn.Linear | None = None
        self.provider = provider

    @property
    def provider(self) -> str:
        return self._provider.name

    @provider.setter
    def provider(self, name: str) -> None:
        self._provider = registry.get(name)
        if self._provider.baseline and self.dense is None:
            # Only the baseline needs a weight matrix; it is a real parameter so it trains too.
            self.dense = nn.Linear(self.in_features, self.out_features, bias=False)
            self.dense.to(device=self.tables.device, dtype=self.tables.dtype)

    def dense_weight(self) -> torch.Tensor:
        if self.dense is None:
            raise RuntimeError("this layer has no dense weight; set provider='dense' first")
        return self.dense.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_features)
        if x.dtype != self.tables.dtype:
            raise TypeError(f"input dtype {x.dtype} differs from the tables' {self.tables.dtype}; cast one of them")
        lead = x.shape[:-1]
        y = self._provider.fn(self, x.reshape(-1, self.in_features))  # Eq. 11
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, K={self.num_chunks}, tau={s.tau}, "
            f"weighting={s.weighting}, temperature={s.temperature}, bias={self.bias is not None}, provider={self.provider}"
        )


# --- attention shared by both architectures -------------------------------------------------------


def rotary(x: torch.Tensor, rot_dim: int, start: int = 0) -> torch.Tensor:
    """GPT-NeoX rotary embedding on the first ``rot_dim`` dims of each head; x is (B, H, S, head_dim), its
    tokens at positions start, start + 1, ..."""
    if rot_dim == 0:
        return x
    seq = x.shape[-2]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2, device=x.device, dtype=torch.float32) / rot_dim))
    positions = torch.arange(start, start + seq, device=x.device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    cos = torch.cat((angles, angles), -1).cos().to(x.dtype)
    sin = torch.cat((angles, angles), -1).sin().to(x.dtype)
    rot, rest = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), -1)
    return torch.cat((rot * cos + rotated * sin, rest), -1)


def heads(qkv: torch.Tensor, n_head: int, rotary_pct: float, start: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v of a fused (B, S, 3d) projection, (B, H, S, head_dim) each; q and k rotated, their tokens at
    positions start, start + 1, ..."""
    b, s, three_d = qkv.shape
    d = three_d // 3
    q, k, v = (t.view(b, s, n_head, d // n_head).transpose(1, 2) for t in qkv.split(d, dim=-1))
    rot_dim = int(d // n_head * rotary_pct) // 2 * 2
    return rotary(q, rot_dim, start), rotary(k, rot_dim, start), v


def causal_attention(qkv: torch.Tensor, n_head: int, rotary_pct: float) -> torch.Tensor:
    """Multi-head causal attention of a fused (B, S, 3d) projection, returning (B, S, d)."""
    q, k, v = heads(qkv, n_head, rotary_pct)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


@dataclass
class KVCache:
    """The keys and values of every block, (batch, heads, capacity, head_dim) each, of which the first
    ``length`` positions are filled. A decode step writes its token's at position ``length``."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, capacity: int, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> "KVCache":
        shape = (batch, cfg.n_head, capacity, cfg.head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)])

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]


def cached_attention(qkv: torch.Tensor, n_head: int, rotary_pct: float, keys: torch.Tensor, values: torch.Tensor,
                     pos: int) -> torch.Tensor:
    """``causal_attention`` of one new token per sequence, qkv (B, 1, 3d), at position ``pos``: its key and
    value are written into the cache at ``pos``, and it attends to the cache's first pos + 1 positions."""
    q, k, v = heads(qkv, n_head, rotary_pct, pos)
    keys[:, :, pos:pos + 1] = k
    values[:, :, pos:pos + 1] = v
    out = F.scaled_dot_product_attention(q, keys[:, :, :pos + 1], values[:, :, :pos + 1])  # all of it is past
    return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


# --- MemoryFormer ------------------------------------------------------------------------------------


def _memory_layer(cfg: ModelConfig, in_features: int, out_features: int, tau: int) -> MemoryLayer:
    return MemoryLayer(in_features, out_features, tau, cfg.temperature, cfg.weighting, provider=cfg.provider)


class MemoryBlock(nn.Module):
    """The FFN's replacement: Norm -> Memory Layer (d -> (tau+2)K) -> Norm -> Memory Layer ((tau+2)-bit chunks -> d).

    No activation between the two layers: the hashing is the non-linearity.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        wide = (cfg.tau + 2) * cfg.num_chunks
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.layer1 = _memory_layer(cfg, cfg.d_model, wide, cfg.tau)
        self.norm2 = nn.LayerNorm(wide)
        self.layer2 = _memory_layer(cfg, wide, cfg.d_model, cfg.tau + 2)  # K chunks, tables of 2**(tau+2) rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.norm2(self.layer1(self.norm1(x))))


class MemoryFormerBlock(nn.Module):
    """Eq. 13: z = x + MHA(Q, K, V) with Q, K, V from Memory Layers and no output projection;
    then y = z + MemoryBlock(z).

    Q, K and V read the same normalised input, so their hashes and weights are identical: the three
    Memory Layers are one layer whose tables are the three concatenated along the output (d -> 3d),
    which is exactly "hash once, look up three tables".
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.qkv = _memory_layer(cfg, cfg.d_model, 3 * cfg.d_model, cfg.tau)
        self.memory_block = MemoryBlock(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x + causal_attention(self.qkv(self.norm(x)), self.cfg.n_head, self.cfg.rotary_pct)
        return z + self.memory_block(z)

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: int) -> torch.Tensor:
        """``forward`` of one new token per sequence, x (B, 1, d), against the cache's past keys and values."""
        z = x + cached_attention(self.qkv(self.norm(x)), self.cfg.n_head, self.cfg.rotary_pct, keys, values, pos)
        return z + self.memory_block(z)


def _check_tokens(idx: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"a language model takes a tensor of token ids, got {type(idx).__name__}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"token ids must be int32 or int64, got {idx.dtype}")
    if idx.dim() != 2 or idx.numel() == 0:
        raise ValueError(f"token ids must have shape (batch, seq) with both > 0, got {tuple(idx.shape)}")
    if not checks_enabled():
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got values in [{lo}, {hi}]")


class _LM(nn.Module):
    """Embedding -> blocks -> final norm -> dense LM head (the one dense layer both models keep)."""

    def __init__(self, cfg: ModelConfig, blocks: list[nn.Module], final_norm: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_tokens(idx, self.cfg.vocab_size)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))

    def step(self, idx: torch.Tensor, cache: KVCache, advance: bool = True) -> torch.Tensor:
        """One generation step: idx (B, 1), the newest token of each sequence, after ``cache.length`` past
        ones; the logits (B, 1, vocab) of the token after it, equal to ``forward``'s last position on the
        whole sequence. ``advance=False`` leaves the cache's length as it was, so a benchmark can repeat
        the same step."""
        _check_tokens(idx, self.cfg.vocab_size)
        if idx.shape[1] != 1:
            raise ValueError(f"a decode step takes one new token per sequence, shape (batch, 1); got {tuple(idx.shape)}")
        if idx.shape[0] != cache.keys[0].shape[0] or cache.length >= cache.capacity:
            raise ValueError(f"the cache holds {cache.keys[0].shape[0]} sequences with room for "
                             f"{cache.capacity - cache.length} more tokens; got {idx.shape[0]} sequences")
        x = self.embed(idx)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values):
            x = block.step(x, keys, values, cache.length)
        if advance:
            cache.length += 1
        return self.lm_head(self.final_norm(x))


class MemoryFormerLM(_LM):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, [MemoryFormerBlock(cfg) for _ in range(cfg.n_layer)], nn.RMSNorm(cfg.d_model, eps=1e-6))

    def memory_layers(self) -> list[MemoryLayer]:
        return [m for m in self.modules() if isinstance(m, MemoryLayer)]

    def set_provider(self, name: str) -> None:
        """Route every Memory Layer through provider ``name``."""
        registry.get(name)
        for layer in self.memory_layers():
            layer.provider = name


# --- the dense baseline ------------------------------------------------------------------------------


class DenseBlock(nn.Module):
    """A Pythia (GPT-NeoX) block: parallel residual, x + Attn(LN1 x) + MLP(LN2 x), 4x GELU MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.proj(causal_attention(self.qkv(self.ln1(x)), self.cfg.n_head, self.cfg.rotary_pct))
        return x + attn + self.mlp(self.ln2(x))

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: int) -> torch.Tensor:
        """``forward`` of one new token per sequence, x (B, 1, d), against the cache's past keys and values."""
        attn = cached_attention(self.qkv(self.ln1(x)), self.cfg.n_head, self.cfg.rotary_pct, keys, values, pos)
        return x + self.proj(attn) + self.mlp(self.ln2(x))


class DenseTransformerLM(_LM):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, [DenseBlock(cfg) for _ in range(cfg.n_layer)], nn.LayerNorm(cfg.d_model))


def build(architecture: str, cfg: ModelConfig) -> _LM:
    """``memoryformer`` or ``dense``, by name (what the CLI and suites take)."""
    if architecture == "memoryformer":
        return MemoryFormerLM(cfg)
    if architecture == "dense":
        return DenseTransformerLM(cfg)
    raise ValueError(f"unknown architecture {architecture!r}; choose 'memoryformer' or 'dense'")


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ModelConfig", "PRESETS", "MemoryLayer", "MemoryBlock", "MemoryFormerBlock", "MemoryFormerLM",
    "DenseBlock", "DenseTransformerLM", "build", "parameter_count", "causal_attention", "rotary", "KVCache",
    "cached_attention", "heads",
]
