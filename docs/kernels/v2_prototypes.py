"""The kernels tried for issue 18 (slice-reuse forward through tl.gather, a one-launch forward, the first
by-token backward), kept as the probes ran them; docs/kernels/v2.md has what each measured. The by-token
backward went into mfbench/kernels/lookup.py; the other two lost."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mfbench.kernels import lookup as v1
from mfbench.kernels import lookup_grad as v1g
from mfbench.core.lookup import LookupSpec


@triton.jit
def slice_forward_kernel(idx_ptr, p_ptr, t_ptr, y_ptr, S, H, K, stride_ys,
                         ROWS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr):
    """Each program holds BLOCK_S tokens x BLOCK_H columns; per table it loads the table's whole column
    slice (ROWS x BLOCK_H) once and gathers every token's row from it on chip, so a slice read from L2
    serves BLOCK_S tokens instead of one."""
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.arange(0, ROWS)
    mask_s = offs_s < S
    mask_h = offs_h < H
    acc = tl.zeros((BLOCK_S, BLOCK_H), dtype=p_ptr.dtype.element_ty)
    bcast = tl.zeros((BLOCK_S, BLOCK_H), dtype=tl.int32)
    for k in range(0, K):
        k64 = tl.cast(k, tl.int64)
        tab = tl.load(t_ptr + (k64 * ROWS + rows[:, None]) * H + offs_h[None, :], mask=mask_h[None, :], other=0.0)
        idx = tl.load(idx_ptr + k64 * S + offs_s, mask=mask_s, other=0)
        p = tl.load(p_ptr + k64 * S + offs_s, mask=mask_s, other=0.0)
        got = tl.gather(tab, idx[:, None] + bcast, 0)
        acc += p[:, None] * got.to(p.dtype)
    out = y_ptr + offs_s[:, None].to(tl.int64) * stride_ys + offs_h[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_h[None, :])


def forward_slice(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec, block_s: int = 512, block_h: int = 16,
                  warps: int = 8, stages: int = 2) -> torch.Tensor:
    s, (k, rows, h) = x.shape[0], tables.shape
    y = torch.empty(s, h, device=x.device, dtype=x.dtype)
    idx, p = v1.hash_and_weight(x, spec)
    grid = (triton.cdiv(s, block_s), triton.cdiv(h, block_h))
    slice_forward_kernel[grid](idx, p, tables, y, s, h, k, y.stride(0), ROWS=rows, BLOCK_S=block_s,
                               BLOCK_H=block_h, num_warps=warps, num_stages=stages)
    return y


def backward_atomic(x, tables, gy, spec: LookupSpec, block_s: int = 32, block_h: int = 128, warps: int = 4,
                    need_x: bool = True, need_t: bool = True, k_per: int = 1):
    s, (k, rows, h) = x.shape[0], tables.shape
    acc = v1.compute_dtype(x.dtype)
    gt = torch.zeros(tables.shape if need_t else (1,), device=x.device, dtype=acc)
    gx = torch.empty_like(x)
    hargs = v1.hash_args(x, spec)
    # The probes ran this kernel as written here; it landed unchanged as the by-token pass.
    v1g._token_backward_kernel[(triton.cdiv(s, block_s), triton.cdiv(k, k_per))](
        x, tables, gy, gx, gt, s, h, k, x.stride(0), gy.stride(0), hargs["two_over_t"], TAU=hargs["TAU"],
        TAU_P2=hargs["TAU_P2"], WEIGHTING=hargs["WEIGHTING"], ROWS=rows, BLOCK_S=block_s, BLOCK_H=block_h,
        K_PER=k_per, NEED_GX=need_x, NEED_GT=need_t, num_warps=warps)
    return gx, (gt if gt.dtype == tables.dtype else gt.to(tables.dtype))


@triton.jit
def fused_forward_kernel(x_ptr, t_ptr, y_ptr, S, H, K, stride_xs, stride_ys, two_over_t: tl.float64,
                         TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, ACC_FP64: tl.constexpr):
    """One launch: each program hashes its own tokens' chunks (again for every column block) and gathers;
    for shapes where a second launch costs more than the repeated hashing."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_s, mask_h = offs_s < S, offs_h < H
    if ACC_FP64:
        scale = v1.scale_block(two_over_t, tl.float64)
    else:
        scale = v1.scale_block(two_over_t, tl.float32)
    acc = tl.zeros((BLOCK_S, BLOCK_H), dtype=scale.dtype)
    for k in range(0, K):
        idx, p, _z, _a, _s, _q = v1.hash_weight_block(x_ptr, offs_s, mask_s, stride_xs, k, scale, TAU, TAU_P2, WEIGHTING)
        ptrs = t_ptr + (tl.cast(k, tl.int64) * ROWS + idx[:, None]) * H + offs_h[None, :]
        rows = tl.load(ptrs, mask=mask_s[:, None] & mask_h[None, :], other=0.0)
        acc += p[:, None] * rows.to(p.dtype)
    out = y_ptr + offs_s[:, None].to(tl.int64) * stride_ys + offs_h[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_h[None, :])


def forward_fused(x, tables, spec: LookupSpec, block_s: int = 32, block_h: int = 128, warps: int = 4, stages: int = 2):
    s, (k, rows, h) = x.shape[0], tables.shape
    y = torch.empty(s, h, device=x.device, dtype=x.dtype)
    hargs = v1.hash_args(x, spec)
    fused_forward_kernel[(triton.cdiv(s, block_s), triton.cdiv(h, block_h))](
        x, tables, y, s, h, k, x.stride(0), y.stride(0), hargs["two_over_t"], TAU=hargs["TAU"],
        TAU_P2=hargs["TAU_P2"], WEIGHTING=hargs["WEIGHTING"], ROWS=rows, BLOCK_S=block_s, BLOCK_H=block_h,
        ACC_FP64=x.dtype == torch.float64, num_warps=warps, num_stages=stages)
    return y
