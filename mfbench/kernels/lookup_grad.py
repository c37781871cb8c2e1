"""The Memory Layer lookup's backward (Eq. 12) and the autograd Function that pairs it with the forward.

Two passes, one chosen per shape by ``backward_strategy``. The sorted pass: the (table, row) keys of all
tokens are sorted (torch.sort), so one program per table row sums p * dL/dy over exactly the tokens that
hit it and writes the row's gradient once, no atomics and no zero-fill; it also produces
g = dL/dy . T_k[h(z_k)] per token and chunk, from which ``_input_backward_kernel`` forms dL/dx through
dp/dz. The by-token pass: one program per token block and table hashes, forms g and dL/dx directly, and
(where few tokens share a row) adds the table gradient by atomics. The sign hash passes no gradient.
Nothing of shape [S, K, out] is ever allocated. The hash and the forward are in ``kernels.lookup``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mfbench.core.lookup import LookupSpec, compute_dtype
from mfbench.kernels import lookup as fwd
from mfbench.kernels.lookup import (HASH_BLOCK, INTERPRETING, check_inputs, hash_and_weight, hash_args,
                                    hash_weight_block, launch, lookup_forward, name_the_triton, scale_block,
                                    size_bucket)


@triton.jit
def _bucket_backward_kernel(order_ptr, offsets_ptr, p_ptr, t_ptr, gy_ptr, g_ptr, gt_ptr, S, H, stride_gys, S_BUCKET,
                            ROWS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                            NEED_GX: tl.constexpr, NEED_GT: tl.constexpr):
    """One program per table row (k, r), over the tokens that hashed to it (sorted beforehand):
    dT_k[r] = sum p * dL/dy (Eq. 12, written once, no atomics) and g = dL/dy . T_k[r] per token."""
    row = tl.program_id(0)
    k = row // ROWS
    start = tl.load(offsets_ptr + row)
    end = tl.load(offsets_ptr + row + 1)
    row_base = tl.cast(row, tl.int64) * H
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        trow = tl.load(t_ptr + row_base + offs_h, mask=mask_h, other=0.0).to(p_ptr.dtype.element_ty)
        acc = tl.zeros((BLOCK_H,), dtype=p_ptr.dtype.element_ty)
        for j0 in range(start, end, BLOCK_T):
            j = j0 + tl.arange(0, BLOCK_T)
            mask_j = j < end
            tok = tl.load(order_ptr + j, mask=mask_j, other=0)
            gy = tl.load(gy_ptr + tok[:, None].to(tl.int64) * stride_gys + offs_h[None, :],
                         mask=mask_j[:, None] & mask_h[None, :], other=0.0).to(p_ptr.dtype.element_ty)
            at = tl.cast(k, tl.int64) * S + tok
            if NEED_GT:
                p = tl.load(p_ptr + at, mask=mask_j, other=0.0)
                acc += tl.sum(p[:, None] * gy, axis=0)
            if NEED_GX:
                tl.atomic_add(g_ptr + at, tl.sum(gy * trow[None, :], axis=1), mask=mask_j)
        if NEED_GT:
            tl.store(gt_ptr + row_base + offs_h, acc.to(gt_ptr.dtype.element_ty), mask=mask_h)


@triton.jit
def _input_backward_kernel(x_ptr, g_ptr, gx_ptr, S, stride_xs, two_over_t: tl.float64,
                           TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr, BLOCK_S: tl.constexpr):
    """dL/dz_i = g * dp/dz_i (Eq. 12); the sign hash passes no gradient."""
    pid_s = tl.program_id(0)
    k = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    scale = scale_block(two_over_t, g_ptr.dtype.element_ty)
    _idx, p, z, a, sig, q = hash_weight_block(x_ptr, offs_s, mask_s, stride_xs, k, scale,
                                            TAU, TAU_P2, WEIGHTING)
    g = tl.load(g_ptr + tl.cast(k, tl.int64) * S + offs_s, mask=mask_s, other=0.0)
    _store_input_grad(gx_ptr, offs_s, mask_s, stride_xs, k, g, p, z, a, sig, q, scale, TAU, TAU_P2, WEIGHTING)


@triton.jit
def _store_input_grad(gx_ptr, offs_s, mask_s, stride_xs, k, g, p, z, a, sig, q, scale,
                      TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr):
    """dL/dz_i = g * dp/dz_i for chunk k of a block of tokens."""
    # sign(0) = 0, as in torch's derivative of |z|, so every provider agrees at zero.
    sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
    if WEIGHTING == 1:
        l1 = tl.sum(a, axis=1)
        dp = sign * q[:, None] * (1.0 + scale * l1[:, None] * (1.0 - sig))
    else:
        dp = sign * p[:, None] * scale * (1.0 - sig)
    i = tl.arange(0, TAU_P2)
    ptrs = gx_ptr + offs_s[:, None].to(tl.int64) * stride_xs + k * TAU + i[None, :]
    tl.store(ptrs, (g[:, None] * dp).to(gx_ptr.dtype.element_ty), mask=mask_s[:, None] & (i < TAU)[None, :])


@triton.jit
def _token_backward_kernel(x_ptr, t_ptr, gy_ptr, gx_ptr, gt_ptr, S, H, K, stride_xs, stride_gys,
                           two_over_t: tl.float64,
                           TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr, ROWS: tl.constexpr,
                           BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, K_PER: tl.constexpr,
                           NEED_GX: tl.constexpr, NEED_GT: tl.constexpr):
    """Backward by token: one program per (token block, K_PER tables). Per table it hashes its tokens'
    chunk, walks the output columns summing g = dL/dy . T_k[h(z_k)] and, with NEED_GT, adds p * dL/dy into
    the hit rows of the (compute-dtype, zeroed) table gradient by atomics, which pays where few tokens
    share a row; dL/dx of the chunk follows from g in the same program. With K_PER > 1 a program walks
    several tables over the same dL/dy tile, which then comes from L1. The accumulation dtype is gt's."""
    pid_s = tl.program_id(0)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    scale = scale_block(two_over_t, gt_ptr.dtype.element_ty)
    for kk in range(0, K_PER):
        k = tl.program_id(1) * K_PER + kk
        live = mask_s & ((k + tl.zeros_like(offs_s)) < K)  # a block, not a scalar: see _gather_rows
        idx, p, z, a, sig, q = hash_weight_block(x_ptr, offs_s, live, stride_xs, k, scale, TAU, TAU_P2, WEIGHTING)
        base = (tl.cast(k, tl.int64) * ROWS + idx) * H
        g = tl.zeros((BLOCK_S,), dtype=gt_ptr.dtype.element_ty)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            m = live[:, None] & (offs_h < H)[None, :]
            gy = tl.load(gy_ptr + offs_s[:, None].to(tl.int64) * stride_gys + offs_h[None, :], mask=m,
                         other=0.0).to(g.dtype)
            if NEED_GX:
                trow = tl.load(t_ptr + base[:, None] + offs_h[None, :], mask=m, other=0.0).to(g.dtype)
                g += tl.sum(gy * trow, axis=1)
            if NEED_GT:
                tl.atomic_add(gt_ptr + base[:, None] + offs_h[None, :], p[:, None] * gy, mask=m, sem="relaxed")
        if NEED_GX:
            _store_input_grad(gx_ptr, offs_s, live, stride_xs, k, g, p, z, a, sig, q, scale, TAU, TAU_P2, WEIGHTING)


# --- launch configuration ------------------------------------------------------------------------

BACKWARD_CONFIGS = [
    triton.Config({"BLOCK_T": bt, "BLOCK_H": bh}, num_warps=w)
    for bt, bh, w in [(2, 2048, 8), (4, 2048, 8), (8, 2048, 16), (2, 1024, 4), (4, 1024, 4), (8, 1024, 8),
                      (4, 512, 4), (8, 512, 4), (16, 512, 8), (8, 256, 4), (4, 512, 2), (2, 512, 2)]
]

def backward_config_fits(config: triton.Config, out_features: int) -> bool:
    # Up to twice the row's width: on the H200 (4, 1024) beat every 512-wide block at h = 512 by 2-5x
    # (docs/kernels/v2.md); wider only wastes lanes.
    return config.kwargs["BLOCK_H"] <= 2 * max(triton.next_power_of_2(out_features), 256)


def _prune_backward(configs, named_args, **kwargs):
    width = {**named_args, **kwargs}["H"]  # the launch passes every argument by keyword
    return [c for c in configs if backward_config_fits(c, width)] or configs



# Fixed configurations for the CPU interpreter, where autotuning would time every config on the CPU.
INTERPRETER_BACKWARD = {"BLOCK_T": 8, "BLOCK_H": 32}
# The by-token backward's launch (fixed, measured on the H200 at d = 512 and 2048; docs/kernels/v2.md).
TOKEN_BACKWARD = {"BLOCK_S": 32, "BLOCK_H": 128, "num_warps": 4}
INTERPRETER_TOKEN_BACKWARD = {"BLOCK_S": 16, "BLOCK_H": 32, "num_warps": 4}
BACKWARD_STRATEGIES = ("fused", "sorted")

BACKWARD_TUNER = triton.autotune(BACKWARD_CONFIGS, key=["S_BUCKET", "H", "ROWS", "NEED_GX", "NEED_GT"],
                                  reset_to_zero=["g_ptr"],
                                  prune_configs_by={"early_config_prune": _prune_backward},
                                  cache_results=True)(_bucket_backward_kernel)


def backward_strategy(tokens: int, out_features: int, rows: int, dtype: torch.dtype = torch.float16) -> str:
    """How the backward does its work at this shape (measured on the H200, docs/kernels/v2.md).

    - ``fused``: one by-token pass gives dL/dx and adds the table gradient by atomics; the fastest where
      few tokens share a row (8 per row at s = 2048, d = 512: 0.117 ms against 0.446 sorted, eager).
    - ``sorted``: the sorted pass gives the table gradient and g together, each row written once; faster
      once many tokens share a row (at s = 8192, d = 512: 0.286 against 0.355 fused) and at h > 1024,
      where the atomics on wide rows cost 2-3x. float64 always takes it: it is the path verified exact
      in float64 on the GPU.
    """
    if out_features > 1024 or dtype == torch.float64 or tokens > 16 * rows:
        return "sorted"
    return "fused"


def _sorted_rows(idx: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens ordered by (table, row), where each row's run starts): the sorted pass's schedule."""
    k, s = idx.shape
    # 16-bit keys where they fit: the radix sort then makes half the passes (0.09 against 0.13 ms on
    # 2M keys, H200).
    key_dtype = torch.int16 if k * rows < 2**15 - 1 else torch.int32
    keys = (idx + torch.arange(k, device=idx.device, dtype=torch.int32)[:, None] * rows).to(key_dtype).flatten()
    sorted_keys, order = torch.sort(keys, stable=True)
    # Where each (table, row) run starts in the sorted keys; cheaper than bincount + cumsum (measured).
    bounds = torch.arange(k * rows + 1, device=idx.device, dtype=key_dtype)
    return (order % s).to(torch.int32), torch.searchsorted(sorted_keys, bounds, out_int32=True)


def _token_pass(x, tables, grad_y, spec, need_x: bool, gt: torch.Tensor | None) -> torch.Tensor | None:
    """The by-token backward: dL/dx (if ``need_x``) and, into ``gt`` (zeroed, compute dtype), the table
    gradient by atomics."""
    s, (k, rows, h) = x.shape[0], tables.shape
    cfg = dict(INTERPRETER_TOKEN_BACKWARD if INTERPRETING else TOKEN_BACKWARD)
    k_per = 4 if h <= 1024 and gt is None else 1  # dL/dx alone: four tables over one dL/dy tile (L1)
    gx = fwd.new_buffer(x.shape, x) if need_x else x
    acc = gt if gt is not None else torch.empty(1, device=x.device, dtype=compute_dtype(x.dtype))
    grid = (triton.cdiv(s, cfg["BLOCK_S"]), triton.cdiv(k, k_per))
    hargs = hash_args(x, spec)
    _token_backward_kernel[grid](x, tables, grad_y, gx, acc, s, h, k, x.stride(0), grad_y.stride(0),
                                 hargs["two_over_t"], TAU=hargs["TAU"], TAU_P2=hargs["TAU_P2"],
                                 WEIGHTING=hargs["WEIGHTING"], ROWS=rows, K_PER=k_per, NEED_GX=need_x,
                                 NEED_GT=gt is not None, **cfg)
    return gx if need_x else None


def _sorted_pass(x, tables, grad_y, spec, need_x: bool, need_tables: bool,
                 config: dict | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The sorted backward: one program per table row over the tokens that hit it writes the row's
    gradient once; with ``need_x`` the same pass gives g and the input kernel dL/dx."""
    s, (k, rows, h) = x.shape[0], tables.shape
    idx, p = hash_and_weight(x, spec)
    tokens, offsets = _sorted_rows(idx, rows)
    g = torch.zeros(k, s, device=x.device, dtype=p.dtype) if need_x else p
    gt = fwd.new_buffer(tables.shape, tables) if need_tables else tables
    args = dict(order_ptr=tokens, offsets_ptr=offsets, p_ptr=p, t_ptr=tables, gy_ptr=grad_y, g_ptr=g, gt_ptr=gt,
                S=s, H=h, stride_gys=grad_y.stride(0), S_BUCKET=size_bucket(s), ROWS=rows,
                NEED_GX=need_x, NEED_GT=need_tables)
    launch(BACKWARD_TUNER, _bucket_backward_kernel, lambda m: (k * rows,), args, config, INTERPRETER_BACKWARD)
    gx = None
    if need_x:
        gx = fwd.new_buffer(x.shape, x)
        _input_backward_kernel[(triton.cdiv(s, HASH_BLOCK), k)](x, g, gx, BLOCK_S=HASH_BLOCK, **hash_args(x, spec))
    return gx, (gt if need_tables else None)


@name_the_triton
def lookup_backward(x: torch.Tensor, tables: torch.Tensor, grad_y: torch.Tensor, spec: LookupSpec,
                    need_x: bool = True, need_tables: bool = True, config: dict | None = None,
                    strategy: str | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Eq. 12: (dL/dx, dL/dtables) from dL/dy, by ``backward_strategy`` unless ``strategy`` names one.

    ``strategy`` chooses how the table gradient is made; dL/dx alone always takes the by-token pass
    (float64: the sorted one). ``config`` fixes the sorted pass's launch (the sweep and the tests); the
    by-token pass has one.
    """
    check_inputs(x, tables, spec)
    if strategy is not None and strategy not in BACKWARD_STRATEGIES:
        raise ValueError(f"unknown backward strategy {strategy!r}; choose one of {', '.join(BACKWARD_STRATEGIES)}")
    x, tables, grad_y = x.contiguous(), tables.contiguous(), grad_y.contiguous()
    strategy = strategy or backward_strategy(x.shape[0], tables.shape[2], tables.shape[1], x.dtype)
    if strategy == "fused" and x.dtype == torch.float64:
        # Its float64 table gradient came out wrong on the H200 (triton 3.6) while right in the interpreter.
        raise TypeError("the fused backward takes float16, bfloat16 and float32 input; float64 takes strategy='sorted'")
    if not need_tables and x.dtype != torch.float64:
        # dL/dx alone: the by-token pass without atomics, the faster at every shape measured (0.43 against
        # 0.55 ms at s = 2048, d = 2048; 0.48 against 0.71 at s = 32768, d = 512; H200, probes 2-3).
        return _token_pass(x, tables, grad_y, spec, need_x, None), None
    if strategy == "sorted" or not need_tables:
        return _sorted_pass(x, tables, grad_y, spec, need_x, need_tables, config)
    gt = torch.zeros(tables.shape, device=x.device, dtype=compute_dtype(x.dtype))
    gx = _token_pass(x, tables, grad_y, spec, need_x, gt)
    return gx, (gt if gt.dtype == tables.dtype else gt.to(tables.dtype))


class MemoryLookup(torch.autograd.Function):
    """Autograd over the fused kernels; the backward recomputes hashes and weights from x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec,
                forward_config: dict | None, backward_config: dict | None) -> torch.Tensor:
        ctx.save_for_backward(x, tables)
        ctx.spec, ctx.backward_config = spec, backward_config
        return lookup_forward(x, tables, spec, forward_config)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, tables = ctx.saved_tensors
        gx, gt = lookup_backward(x, tables, grad_y, ctx.spec, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                 ctx.backward_config)
        return gx, gt, None, None, None


def memory_lookup(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec,
                  forward_config: dict | None = None, backward_config: dict | None = None) -> torch.Tensor:
    """The Memory Layer without bias through the Triton kernels, differentiable in x and tables."""
    return MemoryLookup.apply(x, tables, spec, forward_config, backward_config)


def last_config(direction: str) -> str:
    """The launch configuration the autotuner last picked for ``direction`` ('forward' or 'backward')."""
    if direction == "forward":
        name, tuner, interpreted = fwd.last_forward()
    else:
        name, tuner, interpreted = "backward", BACKWARD_TUNER, INTERPRETER_BACKWARD
    label = f"{name}: " if direction == "forward" else ""
    cfg = getattr(tuner, "best_config", None)
    if INTERPRETING:
        return f"{label}interpreter: {interpreted}"
    return label + ("untuned" if cfg is None else f"{cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}")
