"""Triton kernels for the Memory Layer lookup's forward (Eq. 2-11), and what its backward shares with it.

Forward, two launches. ``_hash_kernel`` reads x once and writes every chunk's row index (Eq. 2-4) and
weight (Eq. 10, or the released variant) as (K, S) arrays. ``_forward_kernel`` gives each program
BLOCK_S tokens x BLOCK_H output columns; it walks the K tables, UNROLL at a time so that several
independent row gathers are in flight, and accumulates p * T_k[idx] in float32 (Eq. 11; in float64 for
float64 input, see ``scale_block``). Consecutive programs share an output-column block, so they sweep the
same table slices at about the same time and the tables stream from HBM close to once.

Decode, one launch. At a few tokens per call (one per sequence in autoregressive decoding) that grid has a
handful of programs, each walking all K tables in series. ``_decode_kernel`` instead splits the tables too:
each program hashes BLOCK_K chunks of BLOCK_S tokens itself and gathers their rows at once for BLOCK_H
columns, adds its partial sum into a float32 (float64) workspace by atomics, and the last program of each
output tile (counted on a per-tile semaphore) moves the tile to y and leaves workspace and semaphore zeroed
for the next call. ``forward_kernel`` picks it by token count. The backward and the autograd Function are in
``kernels.lookup_grad``.

Set TRITON_INTERPRET=1 before importing this module to run the kernels on CPU tensors.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, TypeVar

import torch
import triton
import triton.language as tl

from mfbench.core.lookup import LookupSpec, compute_dtype

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
_WEIGHTING_CODE = {"paper": 0, "released": 1}
# The Triton releases the kernels and their interpreter tests pass on: 3.6 (the test suite's pin, and the
# GPU image's) and 3.9 (the newest; `nox -s interpreter`), 3.7 and 3.8 tried once by hand. pyproject.toml
# asks for the same range.
TESTED_TRITON = ">=3.6,<3.10"


@triton.jit
def scale_block(two_over_t, ACC: tl.constexpr):
    """2/t as a (1, 1) block of the compute dtype ACC, whose dtype every hash computation takes.

    Compiled, ``two_over_t`` is a float64 argument (the kernels annotate it): a plain Python float
    argument would be float32 and round 2/t before the float64 path sees it. The interpreter hands the
    Python float itself, which ``tl.full`` turns into ACC without a float32 step."""
    return tl.full((1, 1), two_over_t, ACC)


@triton.jit
def hash_weight_block(x_ptr, offs_s, mask_s, stride_xs, k, scale,
                     TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr):
    """Chunk k of each token: its row index (Eq. 2-4), weight p (Eq. 10 / released), and the pieces the
    backward needs: z, |z|, sigma(u) with u = 2|z|/t, and q = prod sigma(u); all in scale's dtype.

    z is hashed in that dtype, never rounded first: float64 -1e-50 would round to float32 -0.0, which
    hashes as non-negative, a different row from the reference's."""
    i = tl.arange(0, TAU_P2)
    mask_i = i < TAU
    ptrs = x_ptr + offs_s[:, None].to(tl.int64) * stride_xs + k * TAU + i[None, :]
    z = tl.load(ptrs, mask=mask_s[:, None] & mask_i[None, :], other=0.0).to(scale.dtype)
    idx = tl.sum(tl.where((z >= 0) & mask_i[None, :], 1 << i[None, :], 0), axis=1)
    a = tl.abs(z)
    log_sig = -tl.log(1.0 + tl.exp(-a * scale))  # log sigma(u), stable since u >= 0
    q = tl.exp(tl.sum(tl.where(mask_i[None, :], log_sig, 0.0), axis=1))
    if WEIGHTING == 1:
        p = q * tl.sum(a, axis=1)
    else:
        p = q
    return idx, p, z, a, tl.exp(log_sig), q


@triton.jit
def _hash_kernel(x_ptr, idx_ptr, p_ptr, S, stride_xs, two_over_t: tl.float64,
                 TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr, BLOCK_S: tl.constexpr):
    """Row index and weight of chunk k for a block of tokens, stored (K, S) so that a token block's
    values for one table are contiguous."""
    pid_s = tl.program_id(0)
    k = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    scale = scale_block(two_over_t, p_ptr.dtype.element_ty)  # p's buffer is float64 for float64 input, else float32
    idx, p, _z, _a, _sig, _q = hash_weight_block(x_ptr, offs_s, mask_s, stride_xs, k, scale,
                                                TAU, TAU_P2, WEIGHTING)
    out = tl.cast(k, tl.int64) * S + offs_s
    tl.store(idx_ptr + out, idx, mask=mask_s)
    tl.store(p_ptr + out, p, mask=mask_s)


@triton.jit
def _gather_rows(idx_ptr, p_ptr, t_ptr, S, H, K, k, offs_s, offs_h, mask_s, mask_h, ROWS: tl.constexpr):
    """p * T_k[idx] for a block of tokens and output columns (zero where k >= K)."""
    k = tl.cast(k, tl.int64)
    # A block, not the scalar k < K: a mask built from a broadcast scalar comparison holds int32 in Triton's
    # interpreter, and Triton 3.9's interpreter (its bindings moved from pybind11 to nanobind) refuses any
    # load mask that is not bool ("mask has unsupported dtype"). Compiled, both forms are the same code.
    live = (k + tl.zeros_like(offs_s)) < K
    idx = tl.load(idx_ptr + k * S + offs_s, mask=mask_s & live, other=0)
    p = tl.load(p_ptr + k * S + offs_s, mask=mask_s & live, other=0.0)
    ptrs = t_ptr + (k * ROWS + idx[:, None]) * H + offs_h[None, :]
    rows = tl.load(ptrs, mask=(mask_s & live)[:, None] & mask_h[None, :], other=0.0)
    return p[:, None] * rows.to(p.dtype)


@triton.jit
def _forward_kernel(idx_ptr, p_ptr, t_ptr, y_ptr, S, H, K, stride_ys, S_BUCKET,
                    ROWS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, UNROLL: tl.constexpr):
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_s = offs_s < S
    mask_h = offs_h < H
    acc = tl.zeros((BLOCK_S, BLOCK_H), dtype=p_ptr.dtype.element_ty)
    for k0 in range(0, K, UNROLL):
        # UNROLL independent gathers per trip keep several row loads in flight at once.
        for j in tl.static_range(UNROLL):
            acc += _gather_rows(idx_ptr, p_ptr, t_ptr, S, H, K, k0 + j, offs_s, offs_h, mask_s, mask_h, ROWS)
    out = y_ptr + offs_s[:, None].to(tl.int64) * stride_ys + offs_h[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_h[None, :])


@triton.jit
def _decode_kernel(x_ptr, t_ptr, y_ptr, ws_ptr, sem_ptr, S, H, K, stride_xs, stride_ys, two_over_t: tl.float64,
                   S_BUCKET, TAU: tl.constexpr, TAU_P2: tl.constexpr, WEIGHTING: tl.constexpr, ROWS: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """Programs (table split, column block, token block); each hashes and gathers BLOCK_S x BLOCK_K rows at
    once, so the whole launch has every row load in flight together instead of K in series."""
    pid_k = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_s = tl.program_id(2)
    # Row r of the block is token r // BLOCK_K and table r % BLOCK_K of this split.
    r = tl.arange(0, BLOCK_S * BLOCK_K)
    offs_s = pid_s * BLOCK_S + r // BLOCK_K
    ks = pid_k * BLOCK_K + r % BLOCK_K
    live = (offs_s < S) & (ks < K)
    scale = scale_block(two_over_t, ws_ptr.dtype.element_ty)
    idx, p, _z, _a, _sig, _q = hash_weight_block(x_ptr, offs_s, live, stride_xs, ks[:, None], scale,
                                                TAU, TAU_P2, WEIGHTING)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    row = (ks.to(tl.int64) * ROWS + idx) * H
    rows = tl.load(t_ptr + row[:, None] + offs_h[None, :], mask=live[:, None] & mask_h[None, :], other=0.0)
    part = tl.sum(tl.reshape(p[:, None] * rows.to(p.dtype), (BLOCK_S, BLOCK_K, BLOCK_H)), axis=1)

    tok = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (tok < S)[:, None] & mask_h[None, :]
    ws = ws_ptr + tok[:, None].to(tl.int64) * H + offs_h[None, :]
    tl.atomic_add(ws, part, mask=mask, sem="relaxed")
    tl.debug_barrier()  # every thread's adds are issued before the release below
    tile = sem_ptr + pid_s * tl.num_programs(1) + pid_h
    if tl.atomic_add(tile, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        # The last split of this tile: read the sum by an atomic (atomics act in L2, so no stale cached line
        # of the other programs' adds is read; the interpreter has no float exchange), zero it, reset the
        # semaphore: the next call, a later launch, finds both zeroed.
        zero = tl.zeros_like(part)
        total = tl.atomic_add(ws, zero, mask=mask, sem="relaxed")
        tl.store(ws, zero, mask=mask)
        out = y_ptr + tok[:, None].to(tl.int64) * stride_ys + offs_h[None, :]
        tl.store(out, total.to(y_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(tile, 0)


# --- launch configuration ------------------------------------------------------------------------

FORWARD_CONFIGS = [
    triton.Config({"BLOCK_S": bs, "BLOCK_H": bh, "UNROLL": u}, num_warps=w, num_stages=st)
    for bs, bh, u, w, st in [
        (16, 128, 4, 4, 2), (32, 128, 2, 4, 2), (32, 128, 4, 4, 2), (16, 256, 4, 4, 2), (32, 256, 2, 8, 2),
        (64, 64, 4, 4, 2), (64, 128, 2, 8, 2), (128, 32, 4, 4, 2), (256, 32, 2, 8, 2), (512, 16, 2, 8, 2),
        (16, 128, 1, 4, 3), (32, 128, 1, 4, 4), (64, 128, 1, 8, 4), (32, 64, 1, 4, 4), (16, 128, 1, 4, 5),
        (32, 256, 1, 8, 3), (64, 64, 1, 4, 4), (32, 128, 2, 4, 3),
    ]
]


DECODE_CONFIGS = [
    triton.Config({"BLOCK_S": bs, "BLOCK_K": bk, "BLOCK_H": bh}, num_warps=w)
    for bs, bk, bh, w in [
        (1, 8, 256, 4), (1, 16, 256, 4), (1, 32, 256, 8), (1, 16, 512, 4), (1, 32, 512, 8), (1, 64, 256, 8),
        (2, 8, 256, 4), (2, 16, 256, 8), (2, 16, 512, 8), (4, 8, 256, 4), (4, 8, 512, 8), (4, 16, 256, 8),
        (8, 4, 256, 4), (8, 8, 256, 8), (8, 4, 512, 8), (16, 4, 256, 8), (16, 2, 512, 8), (32, 2, 256, 8),
        (32, 1, 512, 8), (64, 1, 256, 8),
    ]
]
# At most this many tokens a call take the decode kernel. Above it the token blocks alone give the
# gather kernel enough programs, and the decode kernel's atomics grow with the tokens.
DECODE_MAX_TOKENS = 64


def _prune_decode(configs, named_args, **kwargs):
    """No token block wider than the call (those programs would idle), none splitting finer than K."""
    args = {**named_args, **kwargs}  # the launch passes every argument by keyword
    s, k = args["S"], args["K"]
    kept = [c for c in configs if c.kwargs["BLOCK_S"] <= size_bucket(s) and c.kwargs["BLOCK_K"] <= size_bucket(k)]
    return kept or configs[:1]


# Fixed configurations for the CPU interpreter, where autotuning would time every config on the CPU.
INTERPRETER_FORWARD = {"BLOCK_S": 16, "BLOCK_H": 32, "UNROLL": 2}
# Wide blocks (the interpreter runs programs one by one, each vectorised), still two table splits at K >= 3.
INTERPRETER_DECODE = {"BLOCK_S": 8, "BLOCK_K": 2, "BLOCK_H": 128}
HASH_BLOCK = 128

# cache_results: the choice is kept on disk, so each of asv's benchmark processes does not tune again.
FORWARD_TUNER = triton.autotune(FORWARD_CONFIGS, key=["S_BUCKET", "H", "K", "ROWS"], cache_results=True)(_forward_kernel)
DECODE_TUNER = triton.autotune(DECODE_CONFIGS, key=["S_BUCKET", "H", "K", "ROWS"], cache_results=True,
                               prune_configs_by={"early_config_prune": _prune_decode})(_decode_kernel)


def new_buffer(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every output buffer comes from here; the tests swap in one that fills NaN, proving each element is written."""
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype)


def size_bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# Input dtypes the kernels take. Half and single precision are computed in float32, which holds them
# exactly; float64 is computed in float64, so its hashes and weights are those of the reference.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_inputs(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec) -> None:
    if x.dim() != 2 or tables.dim() != 3:
        raise ValueError(f"expected x (S, d) and tables (K, 2**tau, h), got {tuple(x.shape)} and {tuple(tables.shape)}")
    k, rows, _ = tables.shape
    if rows != spec.rows or x.shape[1] != k * spec.tau:
        raise ValueError(f"x {tuple(x.shape)} and tables {tuple(tables.shape)} do not fit tau={spec.tau}")
    if x.device != tables.device:
        raise ValueError(f"x is on {x.device} but the tables are on {tables.device}")
    if x.dtype != tables.dtype:
        raise TypeError(f"x is {x.dtype} but the tables are {tables.dtype}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton lookup takes {', '.join(str(d) for d in SUPPORTED_DTYPES)} input, not {x.dtype}")


def hash_args(x: torch.Tensor, spec: LookupSpec) -> dict:
    return dict(S=x.shape[0], stride_xs=x.stride(0), two_over_t=2.0 / spec.temperature, TAU=spec.tau,
                TAU_P2=triton.next_power_of_2(spec.tau), WEIGHTING=_WEIGHTING_CODE[spec.weighting])


def hash_and_weight(x: torch.Tensor, spec: LookupSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index int32, weight in ``compute_dtype``), each (K, S): Eq. 2-4 and Eq. 10 for every chunk of
    every token."""
    s, k = x.shape[0], x.shape[1] // spec.tau
    idx = new_buffer((k, s), x, torch.int32)
    p = new_buffer((k, s), x, compute_dtype(x.dtype))  # the kernels compute in this buffer's dtype
    _hash_kernel[(triton.cdiv(s, HASH_BLOCK), k)](x, idx, p, BLOCK_S=HASH_BLOCK, **hash_args(x, spec))
    return idx, p


class TritonFailure(RuntimeError):
    """This Triton could not compile or interpret the kernels: a release they are not tested on, or a bug."""


_F = TypeVar("_F", bound=Callable)


def name_the_triton(fn: _F) -> _F:
    """Turns Triton's compile and interpreter errors into a ``TritonFailure`` that names the installed Triton
    and the tested range, in one line: availability probes report an exception's first line as the reason
    a provider is skipped, and "InterpreterError: ValueError('mask has unsupported dtype')" alone does not
    say that the Triton release is the likely cause."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import InterpreterError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CompilationError, InterpreterError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TritonFailure(f"triton {triton.__version__} could not run the lookup kernels "
                                f"({type(exc).__name__}: {first}); they are tested on triton{TESTED_TRITON}") from exc
    return wrapper  # type: ignore[return-value]


_untuned = False


@contextlib.contextmanager
def untuned() -> Iterator[None]:
    """Launch with the fixed configurations, no autotuning (for quick availability probes)."""
    global _untuned
    previous, _untuned = _untuned, True
    try:
        yield
    finally:
        _untuned = previous


def launch(tuned, kernel, grid_of, args: dict, config: dict | None, default: dict) -> None:
    """Autotuned launch on a GPU; a fixed (or the given) configuration under the interpreter."""
    if config is None and not INTERPRETING and not _untuned:
        tuned[grid_of](**args)
        return
    cfg = {**default, **(config or {})}
    warps, stages = cfg.pop("num_warps", 4), cfg.pop("num_stages", None)
    extra = {} if stages is None else {"num_stages": stages}
    kernel[grid_of(cfg)](**args, **cfg, num_warps=warps, **extra)


FORWARD_KERNELS = ("gather", "decode")
_last_forward = "gather"


def forward_kernel(tokens: int, config: dict | None = None) -> str:
    """The forward kernel for a call of ``tokens`` tokens: ``decode`` up to DECODE_MAX_TOKENS, else ``gather``;
    a given launch configuration belongs to the kernel whose parameters it names."""
    if config is not None:
        return "decode" if "BLOCK_K" in config else "gather"
    return "decode" if tokens <= DECODE_MAX_TOKENS else "gather"


def last_forward() -> tuple[str, object, dict]:
    """(kernel name, its autotuner, its interpreter configuration) of the last forward call."""
    if _last_forward == "decode":
        return "decode", DECODE_TUNER, INTERPRETER_DECODE
    return "gather", FORWARD_TUNER, INTERPRETER_FORWARD


_workspaces: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
_retired: list[tuple[torch.Tensor, torch.Tensor]] = []


def decode_workspace(like: torch.Tensor, dtype: torch.dtype, tokens: int, out_features: int):
    """The decode kernel's zeroed accumulator (tokens x out_features of ``dtype``) and per-tile semaphores,
    one pair per device and dtype. Every complete call leaves both zeroed, so they are allocated once, outside
    any CUDA graph captured after a first eager call; calls on one device must not run concurrently on two
    streams. A pair outgrown is kept, never freed: a graph captured on it still writes there when replayed."""
    tiles = tokens * triton.cdiv(out_features, min(c["BLOCK_H"] for c in decode_configs()))
    ws, sem = _workspaces.get((like.device, dtype), (None, None))
    if ws is None or ws.numel() < tokens * out_features or sem.numel() < tiles:
        if ws is not None:
            _retired.append((ws, sem))
        grown = lambda need, old: max(need, 0 if old is None else 2 * old.numel())
        ws = torch.zeros(grown(tokens * out_features, ws), device=like.device, dtype=dtype)
        sem = torch.zeros(grown(tiles, sem), device=like.device, dtype=torch.int32)
        _workspaces[(like.device, dtype)] = ws, sem
    return ws, sem


def decode_configs() -> list[dict]:
    return [c.kwargs for c in DECODE_CONFIGS] + [INTERPRETER_DECODE]


def _decode(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec, y: torch.Tensor, config: dict | None) -> None:
    s, (k, rows, h) = x.shape[0], tables.shape
    ws, sem = decode_workspace(x, compute_dtype(x.dtype), s, h)
    args = dict(x_ptr=x, t_ptr=tables, y_ptr=y, ws_ptr=ws, sem_ptr=sem, H=h, K=k, stride_ys=y.stride(0),
                S_BUCKET=size_bucket(s), ROWS=rows, **hash_args(x, spec))
    grid = lambda m: (triton.cdiv(k, m["BLOCK_K"]), triton.cdiv(h, m["BLOCK_H"]), triton.cdiv(s, m["BLOCK_S"]))
    launch(DECODE_TUNER, _decode_kernel, grid, args, config, INTERPRETER_DECODE)


@name_the_triton
def lookup_forward(x: torch.Tensor, tables: torch.Tensor, spec: LookupSpec, config: dict | None = None,
                   out: torch.Tensor | None = None, kernel: str | None = None) -> torch.Tensor:
    """y = sum_k p(z_k) T_k[h(z_k)] for x (S, d), tables (K, 2**tau, h): a hash pass, then the gather; or,
    at a few tokens, both in the one decode launch (``kernel``: ``forward_kernel``'s choice if None).

    ``out`` (S, h), contiguous and of x's dtype, receives the result if given (tests poison it first).
    """
    global _last_forward
    check_inputs(x, tables, spec)
    x, tables = x.contiguous(), tables.contiguous()
    s, (k, rows, h) = x.shape[0], tables.shape
    y = new_buffer((s, h), x) if out is None else out
    if y.shape != (s, h) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {(s, h)}")
    kernel = kernel or forward_kernel(s, config)
    if kernel not in FORWARD_KERNELS:
        raise ValueError(f"unknown forward kernel {kernel!r}; choose one of {', '.join(FORWARD_KERNELS)}")
    _last_forward = kernel
    if s == 0:
        return y
    if kernel == "decode":
        _decode(x, tables, spec, y, config)
        return y
    idx, p = hash_and_weight(x, spec)
    args = dict(idx_ptr=idx, p_ptr=p, t_ptr=tables, y_ptr=y, S=s, H=h, K=k, stride_ys=y.stride(0),
                S_BUCKET=size_bucket(s), ROWS=rows)
    grid = lambda m: (triton.cdiv(s, m["BLOCK_S"]), triton.cdiv(h, m["BLOCK_H"]))
    launch(FORWARD_TUNER, _forward_kernel, grid, args, config, INTERPRETER_FORWARD)
    return y
