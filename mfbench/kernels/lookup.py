"""Fused Triton kernels for the Memory Layer lookup (Eq. 2-12) and the autograd Function that calls them.

Forward: one pass over x. A program owns BLOCK_S tokens x BLOCK_H output columns and walks the K tables,
hashing each chunk (Eq. 2-4), weighting it (Eq. 10 or the released variant), fetching the row slice and
accumulating in float32 (Eq. 11). Two ways to fetch rows, picked by the autotuner:
  * GATHER=0: each token loads its row slice straight from global memory (L1/L2 serve the repeats);
  * GATHER=1: the program loads the table's whole (2**tau, BLOCK_H) slice once and picks rows from it on
    chip with ``tl.gather``, which pays off once a block holds more tokens than the table has rows.
Consecutive programs share an output-column block, so they sweep the same table slices at about the
same time and the tables stream from HBM close to once.

Backward (Eq. 12), one fused kernel per (token block, table): walking the output columns it accumulates
g = dL/dy . T_k[h(z_k)] for the input gradient and scatters p * dL/dy into the table gradient with
float32 atomics; the sign hash passes no gradient. Nothing of shape [S, K, out] is ever allocated.

Set TRITON_INTERPRET=1 before importing this module to run the kernels on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mfbench.lookup import LookupSpec

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
_WEIGHTING_CODE = {"paper": 0, "released": 1}

# Test-only knob: repeat the forward's table walk this many extra times, to plant a known slowdown.
_EXTRA_PASSES = int(os.environ.get("MFBENCH_PLANT_SLOWDOWN", "0") or 0)


@triton.jit
def _hash_and_weight(x_ptr, offs_s, mask_s, stride_xs, k, two_over_t,
                     TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr):
    """Chunk k of each token: its row index (Eq. 2-4), weight p (Eq. 10 / released), and the pieces the
    backward needs: z, |z|, sigma(u) with u = 2|z|/t, and q = prod sigma(u)."""
    i = tl.arange(0, TAU_P2)
    mask_i = i < TAU
    ptrs = x_ptr + offs_s[:, None].to(tl.int64) * stride_xs + k * TAU + i[None, :]
    z = tl.load(ptrs, mask=mask_s[:, None] & mask_i[None, :], other=0.0).to(tl.float32)
    idx = tl.sum(tl.where((z >= 0) & mask_i[None, :], 1 << i[None, :], 0), axis=1)
    a = tl.abs(z)
    log_sig = -tl.log(1.0 + tl.exp(-a * two_over_t))  # log sigma(u), stable since u >= 0
    q = tl.exp(tl.sum(tl.where(mask_i[None, :], log_sig, 0.0), axis=1))
    if WEIGHTING == 1:
        p = q * tl.sum(a, axis=1)
    else:
        p = q
    return idx, p, z, a, tl.exp(log_sig), q


@triton.jit
def _forward_kernel(x_ptr, t_ptr, y_ptr, S, H, K, stride_xs, stride_ys, two_over_t, S_BUCKET,
                    TAU: tl.constexpr, TAU_P2: tl.constexpr, ROWS: tl.constexpr, WEIGHTING: tl.constexpr,
                    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, GATHER: tl.constexpr,
                    PASSES: tl.constexpr):
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_s = offs_s < S
    mask_h = offs_h < H
    acc = tl.zeros((BLOCK_S, BLOCK_H), dtype=tl.float32)
    for _ in tl.static_range(PASSES):
        acc = acc * 0.0
        for k in range(K):
            idx, p, _z, _a, _sig, _q = _hash_and_weight(x_ptr, offs_s, mask_s, stride_xs, k, two_over_t,
                                                        TAU, TAU_P2, WEIGHTING)
            base = t_ptr + tl.cast(k, tl.int64) * ROWS * H
            if GATHER:
                r = tl.arange(0, ROWS)
                tile = tl.load(base + r[:, None] * H + offs_h[None, :], mask=mask_h[None, :], other=0.0)
                rows = tl.gather(tile, tl.broadcast_to(idx[:, None], (BLOCK_S, BLOCK_H)), 0)
            else:
                ptrs = base + idx[:, None].to(tl.int64) * H + offs_h[None, :]
                rows = tl.load(ptrs, mask=mask_s[:, None] & mask_h[None, :], other=0.0)
            acc += p[:, None] * rows.to(tl.float32)
    out = y_ptr + offs_s[:, None].to(tl.int64) * stride_ys + offs_h[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_h[None, :])


@triton.jit
def _backward_kernel(x_ptr, t_ptr, gy_ptr, gx_ptr, gt_ptr, S, H, K, stride_xs, stride_gys, two_over_t, S_BUCKET,
                     TAU: tl.constexpr, TAU_P2: tl.constexpr, ROWS: tl.constexpr, WEIGHTING: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
                     NEED_GX: tl.constexpr, NEED_GT: tl.constexpr):
    pid_s = tl.program_id(0)
    k = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    idx, p, z, a, sig, q = _hash_and_weight(x_ptr, offs_s, mask_s, stride_xs, k, two_over_t,
                                            TAU, TAU_P2, WEIGHTING)
    row = (tl.cast(k, tl.int64) * ROWS + idx[:, None].to(tl.int64)) * H
    g = tl.zeros((BLOCK_S,), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask = mask_s[:, None] & (offs_h < H)[None, :]
        gy = tl.load(gy_ptr + offs_s[:, None].to(tl.int64) * stride_gys + offs_h[None, :], mask=mask, other=0.0)
        gy = gy.to(tl.float32)
        if NEED_GX:
            rows = tl.load(t_ptr + row + offs_h[None, :], mask=mask, other=0.0)
            g += tl.sum(gy * rows.to(tl.float32), axis=1)
        if NEED_GT:
            tl.atomic_add(gt_ptr + row + offs_h[None, :], p[:, None] * gy, mask=mask)
    if NEED_GX:
        # dp/dz_i; sign(0) = 0 as in torch's |z|' so the three paths agree at zero.
        sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
        if WEIGHTING == 1:
            l1 = tl.sum(a, axis=1)
            dp = sign * q[:, None] * (1.0 + two_over_t * l1[:, None] * (1.0 - sig))
        else:
            dp = sign * p[:, None] * two_over_t * (1.0 - sig)
        i = tl.arange(0, TAU_P2)
        ptrs = gx_ptr + offs_s[:, None].to(tl.int64) * stride_xs + k * TAU + i[None, :]
        tl.store(ptrs, (g[:, None] * dp).to(gx_ptr.dtype.element_ty), mask=mask_s[:, None] & (i < TAU)[None, :])


# --- launch configuration ------------------------------------------------------------------------


def _prune_forward(configs, named_args, **kwargs):
    rows = kwargs.get("ROWS", named_args.get("ROWS"))
    keep = [c for c in configs if not c.kwargs["GATHER"] or rows * c.kwargs["BLOCK_H"] <= 8192]
    return keep or configs


_FORWARD_CONFIGS = [
    triton.Config({"BLOCK_S": bs, "BLOCK_H": bh, "GATHER": g}, num_warps=w)
    for g, bs, bh, w in [
        (0, 16, 128, 4), (0, 32, 128, 4), (0, 64, 128, 8), (0, 32, 256, 8), (0, 64, 64, 4), (0, 128, 64, 8),
        (1, 256, 32, 8), (1, 512, 16, 8), (1, 256, 16, 4), (1, 128, 32, 4), (1, 512, 32, 16),
    ]
]
_BACKWARD_CONFIGS = [
    triton.Config({"BLOCK_S": bs, "BLOCK_H": bh}, num_warps=w)
    for bs, bh, w in [(16, 128, 4), (32, 128, 4), (64, 64, 4), (32, 256, 8), (64, 128, 8)]
]
# Fixed configurations for the CPU interpreter, where autotuning would time every config on the CPU.
INTERPRETER_FORWARD = {"BLOCK_S": 16, "BLOCK_H": 32, "GATHER": 0}
INTERPRETER_BACKWARD = {"BLOCK_S": 16, "BLOCK_H": 32}

_forward_tuned = triton.autotune(_FORWARD_CONFIGS, key=["S_BUCKET", "H", "K", "TAU", "WEIGHTING"],
                                 prune_configs_by={"early_config_prune": _prune_forward})(_forward_kernel)
_backward_tuned = triton.autotune(_BACKWARD_CONFIGS, key=["S_BUCKET", "H", "K", "TAU", "NEED_GX", "NEED_GT"],
                                  reset_to_zero=["gt_ptr"])(_backward_kernel)


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _check(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec) -> None:
    if x.dim() != 2 or tables.dim() != 3:
        raise ValueError(f"expected x (S, d) and tables (K, 2**tau, h), got {tuple(x.shape)} and {tuple(tables.shape)}")
    k, rows, _ = tables.shape
    if rows != spec.rows or x.shape[1] != k * spec.tau:
        raise ValueError(f"x {tuple(x.shape)} and tables {tuple(tables.shape)} do not fit tau={spec.tau}")
    if x.device != tables.device:
        raise ValueError(f"x is on {x.device} but the tables are on {tables.device}")
    if x.dtype != tables.dtype:
        raise TypeError(f"x is {x.dtype} but the tables are {tables.dtype}")


def _common(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec) -> dict:
    k, rows, h = tables.shape
    # S_BUCKET (unused in the kernels) keys the autotuner on the token count's power of two.
    return dict(S=x.shape[0], S_BUCKET=_bucket(x.shape[0]), H=h, K=k, stride_xs=x.stride(0), two_over_t=2.0 / spec.temperature,
                TAU=spec.tau, TAU_P2=triton.next_power_of_2(spec.tau), ROWS=rows,
                WEIGHTING=_WEIGHTING_CODE[spec.weighting])


def lookup_forward(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec, config: dict | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """y = sum_k p(z_k) T_k[h(z_k)] for x (S, d), tables (K, 2**tau, h): one fused launch.

    ``out`` (S, h), contiguous and of x's dtype, receives the result if given (tests poison it first).
    """
    _check(x, tables, spec)
    x, tables = x.contiguous(), tables.contiguous()
    y = torch.empty(x.shape[0], tables.shape[2], device=x.device, dtype=x.dtype) if out is None else out
    if y.shape != (x.shape[0], tables.shape[2]) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {(x.shape[0], tables.shape[2])}")
    args = _common(x, tables, spec)
    args["stride_ys"] = y.stride(0)
    passes = 1 + _EXTRA_PASSES
    if config is None and not INTERPRETING:
        grid = lambda m: (triton.cdiv(args["S"], m["BLOCK_S"]), triton.cdiv(args["H"], m["BLOCK_H"]))
        _forward_tuned[grid](x, tables, y, PASSES=passes, **args)
    else:
        cfg = {**INTERPRETER_FORWARD, **(config or {})}
        warps = cfg.pop("num_warps", 4)
        grid = (triton.cdiv(args["S"], cfg["BLOCK_S"]), triton.cdiv(args["H"], cfg["BLOCK_H"]))
        _forward_kernel[grid](x, tables, y, PASSES=passes, num_warps=warps, **args, **cfg)
    return y


def lookup_backward(x: torch.Tensor, tables: torch.Tensor, grad_y: torch.Tensor, spec: LookupSpec,
                    need_x: bool = True, need_tables: bool = True,
                    config: dict | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Eq. 12: (dL/dx, dL/dtables) from dL/dy; the table gradient is accumulated in float32."""
    _check(x, tables, spec)
    x, tables, grad_y = x.contiguous(), tables.contiguous(), grad_y.contiguous()
    gx = torch.empty_like(x) if need_x else x  # a placeholder pointer when not needed
    gt = torch.zeros(tables.shape, device=x.device, dtype=torch.float32) if need_tables else tables
    args = _common(x, tables, spec)
    args.update(stride_gys=grad_y.stride(0), NEED_GX=need_x, NEED_GT=need_tables)
    if config is None and not INTERPRETING:
        grid = lambda m: (triton.cdiv(args["S"], m["BLOCK_S"]), args["K"])
        _backward_tuned[grid](x, tables, grad_y, gx, gt, **args)
    else:
        cfg = {**INTERPRETER_BACKWARD, **(config or {})}
        warps = cfg.pop("num_warps", 4)
        grid = (triton.cdiv(args["S"], cfg["BLOCK_S"]), args["K"])
        _backward_kernel[grid](x, tables, grad_y, gx, gt, num_warps=warps, **args, **cfg)
    return (gx if need_x else None), (gt.to(tables.dtype) if need_tables else None)


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
    tuner = _forward_tuned if direction == "forward" else _backward_tuned
    cfg = getattr(tuner, "best_config", None)
    if INTERPRETING:
        return "interpreter: " + str(INTERPRETER_FORWARD if direction == "forward" else INTERPRETER_BACKWARD)
    return "untuned" if cfg is None else f"{cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}"
