"""Threshold-sparse GEMV for decode: y = where(|x| > tau, x, 0) @ weight_t (+ bias).

Design (memory-bound GEMV, M = 1..16 rows of x, H100 target):

* Weight stored transposed, ``weight_t [K, N]`` row-major: input channel k is one contiguous
  row of N elements. A CTA owns BLOCK_N columns of ONE segment and a chunk of CHUNK_K =
  BLOCK_K * K_ITERS rows (split-K). Grid = (column tiles of all segments, cdiv(K, CHUNK_K)),
  sized by the autotuner so that the CTAs fill the 132 SMs (see ``autotune_configs``).
* Each loop iteration loads BLOCK_K entries of x for all M rows and the segment's thresholds,
  computes keep[m, k] = |x[m, k]| > tau[seg, k] (fp32 compare: exact for every input dtype),
  and loads the weight tile with the row mask any_m(keep[:, k]): a channel dropped by every row
  is never requested from memory (masked-off lanes issue no load; the mask is constant along a
  whole row, so all of the row's 16-byte vector loads are predicated off). x and tau for the
  next iteration are loaded before the current tile is consumed, so the weight loads never
  wait on the x -> mask dependency.
* COMPACT variant (offered to the autotuner for sparsity hints >= 50% or unknown): each CTA
  first lists the kept channels of its chunk (union over rows, one prefix sum, written to its
  own slice of an int32 scratch buffer), then every iteration reads BLOCK_K *kept* rows. The
  masked variant's bytes in flight per iteration shrink with the sparsity (BLOCK_K rows of
  which a fraction is kept), this one's do not; it pays one scan per CTA.
* Exact per-row semantics: row m multiplies only its own kept entries (x is zeroed per (m, k));
  the union over rows only decides what is read.
* Segments (sibling linears sharing x, concatenated along N): tiles are laid out per segment
  (a segment's last tile may be partial and is bounds-masked), so a tile never mixes two
  segments' thresholds; the tile -> segment map is a few scalar ops on the segment ends, which
  come as plain integer arguments (no device table, nothing to copy at launch; up to 8).
* M = 1, 2, 4 (FMA path): one elementwise fp32 accumulator [BLOCK_K, BLOCK_N] per row, in the
  weight tile's own layout, reduced over K once after the loop. M >= 5 (and M in {2, 4} where
  the tuner prefers it): ``tl.dot`` with x padded to 16 rows (mma, fp32 accumulation; fp32
  inputs use ``input_precision="ieee"``, not TF32).
* WIDE = 1 (``fma_wide.py``, M <= 4): tiles of BLOCK_N = 256 columns per warp where every
  lane holds all BLOCK_K rows of its 8 columns, K summed in-thread, small CTAs, short chunks;
  COMPACT there runs cdiv(kept channels, BLOCK_K) steps. The fastest path at M <= 2.
* Reduction across K splits (``splitk.py``): by default every CTA adds its fp32 partial
  [M, BLOCK_N] into a self-cleaning fp32 workspace with fp32 atomics and the last CTA of each
  column tile writes y (one kernel); ``WAS_SPLITK_REDUCTION=ordered`` writes the partials to
  [splits, M, N] and sums them in a fixed order in a second small kernel (bitwise
  reproducible). Never fp16/bf16 atomics. The pruner bounds the split-K traffic: partials
  written and read back under 10% of the weight bytes, fp32 atomics into L2 under 25%
  (``autotune_configs``). No memset, no host sync, no data-dependent
  shapes: the launcher is CUDA-graph capturable once the shape is tuned and the workspace
  reserved (run one call before capture; autotuning itself cannot run inside a capture).
* Interpreter (TRITON_INTERPRET=1) workarounds, compiled out on the GPU: its ``tl.dot`` treats
  bf16 as integers (operands are upcast to fp32 there) and its fp32 -> bf16 cast truncates
  (rounded to nearest even by hand there).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .autotune_configs import (
    MAX_M,
    MAX_SEGMENTS,
    autotune_enabled,
    candidate_configs,
    column_tiles,
    get_autotune_configs,
    interpret_mode,
    m_bucket,
    num_k_splits,
    refinement_variants,
    sparsity_bucket,
)
from .fma_wide import _fma_tile_wide
from .gemv_rows import WEIGHT_EVICTION, keep_rows, load_rows, step_channels
from .gemv_tuner import (
    capturing,
    choose_config,
    config_dict,
    sequence_timer,
    tuning_key,
    weight_copies,
)
from .output_activation import OutputActivation, activation_reference
from .splitk import (
    REDUCTION_MODES,
    _atomic_splitk_epilogue,
    _splitk_reduce_kernel,
    atomic_workspace,
    reduction_mode,
    reserve_workspace,
)

__all__ = ["sparse_gemv", "reserve_workspace_for", "last_autotune_config", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _compact_chunk(x_ptr, thr_ptr, list_ptr, M, K, stride_xm, k_start,
                   M_ROWS: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
    """COMPACT variant, once per CTA: write the channels of [k_start, k_start + CHUNK) kept by
    at least one row of x, in increasing order, to list_ptr[0:count] (this CTA's own slice of
    an int32 scratch buffer); return count. The main loop then reads BLOCK_K kept rows per
    iteration however sparse x is, instead of BLOCK_K rows of which only a few are kept."""
    offs = k_start + tl.arange(0, CHUNK)
    ok = offs < K
    zc = tl.zeros([CHUNK], dtype=tl.int32)
    thr = tl.load(thr_ptr + offs, mask=ok, other=float("inf"))
    kept = zc
    for r in tl.static_range(M_ROWS):
        xr = tl.load(x_ptr + r * stride_xm + offs, mask=ok & (zc < M - r), other=0.0)
        kept = kept | (tl.abs(xr.to(tl.float32)) > thr).to(tl.int32)
    pos = tl.cumsum(kept, axis=0) - 1
    tl.store(list_ptr + pos, offs, mask=kept > 0)
    tl.debug_barrier()  # the list is read back by other threads of this CTA
    return tl.sum(kept, axis=0)


@triton.jit
def _fma_rows(x_ptr, thr_ptr, list_ptr, count, K, stride_xm, k_start, j, M,
              BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, COMPACT: tl.constexpr):  # fmt: skip
    """Channels of step j (contiguous, or the next BLOCK_K entries of the kept list), their
    x for up to 4 rows in fp32 (rows >= M are 0) and the rows' keep masks; x of a dropped
    channel is zeroed here, so the FMA needs no select. Out-of-chunk steps keep nothing."""
    offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
    thr, r0, r1, r2, r3 = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
    kept, x0, x1, x2, x3 = keep_rows(thr, r0, r1, r2, r3, BLOCK_M)
    return offs_k, kept, x0, x1, x2, x3


@triton.jit
def _fma_tile(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, offs_n,
              n_mask, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              K_ITERS: tl.constexpr, COMPACT: tl.constexpr):  # fmt: skip
    """CUDA-core path for 1, 2 or 4 rows: one elementwise fp32 accumulator [BLOCK_K, BLOCK_N]
    per row (reduced over K once, after the loop), all in the weight tile's own layout.

    Software-pipelined by hand, two weight tiles deep: the loads of step i + 1 are issued
    before step i's tile is consumed. Triton pipelines (cp.async) only loads that feed a
    tl.dot, and a warp stalls at the first use of a load; without the second buffer each warp
    has one tile in flight, and a dropped row shrinks it, so bandwidth fell with sparsity
    (H100: gate|up at 50% read at half the copy bandwidth)."""
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    j = tl.arange(0, BLOCK_K)
    offs_k, kept, x0, x1, x2, x3 = _fma_rows(x_ptr, thr_ptr, list_ptr, count, K, stride_xm,
                                             k_start, j, M, BLOCK_M, CHUNK, COMPACT)  # fmt: skip
    w = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :],
                mask=kept[:, None] & n_mask[None, :], other=0.0,
                eviction_policy=WEIGHT_EVICTION)  # fmt: skip
    acc0 = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    for _ in range(K_ITERS):
        # the next step's rows and weight tile are requested before this one is consumed
        # (past the chunk nothing is kept, so the last prefetch reads nothing)
        j += BLOCK_K
        offs_n_k, kept_n, y0, y1, y2, y3 = _fma_rows(x_ptr, thr_ptr, list_ptr, count, K,
                                                     stride_xm, k_start, j, M, BLOCK_M, CHUNK,
                                                     COMPACT)  # fmt: skip
        w_next = tl.load(w_ptr + offs_n_k[:, None] * N + offs_n[None, :],
                         mask=kept_n[:, None] & n_mask[None, :], other=0.0,
                         eviction_policy=WEIGHT_EVICTION)  # fmt: skip
        wf = w.to(tl.float32)
        acc0 += x0[:, None] * wf
        if BLOCK_M >= 2:
            acc1 += x1[:, None] * wf
        if BLOCK_M >= 4:
            acc2 += x2[:, None] * wf
            acc3 += x3[:, None] * wf
        w = w_next
        x0 = y0
        x1 = y1
        x2 = y2
        x3 = y3
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, tl.sum(acc0, axis=0)[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, tl.sum(acc1, axis=0)[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, tl.sum(acc2, axis=0)[None, :], part)
        part = tl.where(rows == 3, tl.sum(acc3, axis=0)[None, :], part)
    return part


@triton.jit
def _dot_tile(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, offs_n,
              n_mask, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_ITERS: tl.constexpr,
              COMPACT: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """Tensor-core path: x (padded to 16 rows) @ weight tile, fp32 accumulator [16, BLOCK_N]."""
    offs_m = tl.arange(0, 16)  # mma needs >= 16 rows: x is padded with masked rows
    m_mask = offs_m < M
    j = tl.arange(0, BLOCK_K)
    if COMPACT:
        ok = j < count
        offs_k = tl.load(list_ptr + j, mask=ok, other=0)
    else:
        offs_k = k_start + j
        ok = offs_k < K
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & ok[None, :], other=0.0)
    thr = tl.load(thr_ptr + offs_k, mask=ok, other=float("inf"))
    acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
    for _ in range(K_ITERS):
        keep = (tl.abs(x.to(tl.float32)) > thr[None, :]) & m_mask[:, None]
        row_kept = tl.max(keep.to(tl.int32), axis=0) > 0  # union over the rows
        w_ptrs = w_ptr + offs_k[:, None] * N + offs_n[None, :]
        w = tl.load(
            w_ptrs,
            mask=row_kept[:, None] & n_mask[None, :],
            other=0.0,
            eviction_policy=WEIGHT_EVICTION,
        )
        j += BLOCK_K
        if COMPACT:
            ok = j < count
            offs_k = tl.load(list_ptr + j, mask=ok, other=0)
        else:
            offs_k = k_start + j
            ok = offs_k < K
        x_next = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & ok[None, :], other=0.0)
        thr = tl.load(thr_ptr + offs_k, mask=ok, other=float("inf"))
        xm = tl.where(keep, x, tl.zeros_like(x))  # exact zeros in x's own dtype
        if INTERPRET:  # interpreter only: its tl.dot multiplies bf16 bit patterns as ints
            acc = tl.dot(xm.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        elif x_ptr.dtype.element_ty == tl.float32:
            acc = tl.dot(xm, w, acc, input_precision="ieee")  # no TF32
        else:
            acc = tl.dot(xm, w, acc)  # fp16/bf16 products are exact in the fp32 accumulator
        x = x_next
    return acc


@triton.jit(do_not_specialize=["SPARSITY_BUCKET"])
def _sparse_gemv_kernel(
    x_ptr, w_ptr, thr_ptr, part_ptr, nsplit_ptr, list_base, ticket_ptr, bias_ptr, y_ptr,
    M, N, K, stride_xm, stride_thr,
    E0, E1, E2, E3, E4, E5, E6, E7,
    SPARSITY_BUCKET, h_ptr, HALF,  # (h_ptr, HALF here, not beside y_ptr and stride_thr:
    # there ptxas gave the dot path 78 registers instead of 72 on Llama-3-8B down and gate+up
    # at M = 8, one CTA fewer per SM and a second wave, 20% slower; kernel_notes section 15)
    M_BUCKET: tl.constexpr, SEG_ALIGNED: tl.constexpr, INTERPRET: tl.constexpr,
    ATOMIC_REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_ITERS: tl.constexpr, USE_DOT: tl.constexpr,
    COMPACT: tl.constexpr, WIDE: tl.constexpr = 0, ACT: tl.constexpr = 0,
    GATED: tl.constexpr = 0, GATE_FIRST: tl.constexpr = 1,
):  # fmt: skip
    """One CTA: columns [n0, n0 + BLOCK_N) of one segment x rows [k_start, k_start + CHUNK).
    ATOMIC_REDUCE: adds its fp32 partial into the zeroed workspace part[:M, :] and the tile's
    last CTA writes y (splitk.py); else writes it to part[pid_k, :M, n0:n0 + BLOCK_N] for the
    ordered reduction kernel. ACT, GATED, GATE_FIRST, h_ptr, HALF: the output activation
    the atomic epilogue writes (``output_activation.py``)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)

    # column tile -> (segment, first column, segment end). Tiles are numbered segment after
    # segment; a tile at or after a segment's first tile belongs to it unless a later segment
    # claims it. Unused trailing ends equal N (empty segments: they claim nothing).
    # (Written out, not as a helper: nested jit calls are slow in the interpreter.)
    n0 = pid_n * BLOCK_N
    n_end = E0
    seg = 0
    base = (E0 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E0 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E1, n_end)
    seg = tl.where(inside, 1, seg)
    base += (E1 - E0 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E1 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E2, n_end)
    seg = tl.where(inside, 2, seg)
    base += (E2 - E1 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E2 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E3, n_end)
    seg = tl.where(inside, 3, seg)
    base += (E3 - E2 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E3 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E4, n_end)
    seg = tl.where(inside, 4, seg)
    base += (E4 - E3 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E4 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E5, n_end)
    seg = tl.where(inside, 5, seg)
    base += (E5 - E4 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E5 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E6, n_end)
    seg = tl.where(inside, 6, seg)
    base += (E6 - E5 + BLOCK_N - 1) // BLOCK_N
    inside = pid_n >= base
    n0 = tl.where(inside, E6 + (pid_n - base) * BLOCK_N, n0)
    n_end = tl.where(inside, E7, n_end)
    seg = tl.where(inside, 7, seg)
    if SEG_ALIGNED:  # every segment end is a multiple of 16: lets loads vectorise
        n0 = tl.multiple_of(n0, 16)
        n_end = tl.multiple_of(n_end, 16)

    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_end
    k_start = pid_k * (BLOCK_K * K_ITERS)
    thr_row = thr_ptr + seg * stride_thr
    if COMPACT:
        list_ptr = list_base + (pid_k * tl.num_programs(0) + pid_n) * (BLOCK_K * K_ITERS)
        count = _compact_chunk(x_ptr, thr_row, list_ptr, M, K, stride_xm, k_start,
                               M_BUCKET, BLOCK_K * K_ITERS)  # fmt: skip
    else:
        list_ptr = list_base
        count = 0

    if USE_DOT or M_BUCKET > 4:  # the FMA paths carry at most 4 rows
        part = _dot_tile(x_ptr, w_ptr, thr_row, list_ptr, count, M, N, K, stride_xm, k_start,
                         offs_n, n_mask, BLOCK_N, BLOCK_K, K_ITERS, COMPACT,
                         INTERPRET)  # fmt: skip
        offs_m = tl.arange(0, 16)
    elif WIDE:  # wide tiles: many rows per thread, K reduced in-thread (fma_wide.py)
        part = _fma_tile_wide(x_ptr, w_ptr, thr_row, list_ptr, count, M, N, K, stride_xm,
                              k_start, n0, n_end, M_BUCKET, BLOCK_N, BLOCK_K, K_ITERS,
                              COMPACT, SEG_ALIGNED)  # fmt: skip
        offs_m = tl.arange(0, M_BUCKET)
    else:
        part = _fma_tile(x_ptr, w_ptr, thr_row, list_ptr, count, M, N, K, stride_xm, k_start,
                         offs_n, n_mask, M_BUCKET, BLOCK_N, BLOCK_K, K_ITERS,
                         COMPACT)  # fmt: skip
        offs_m = tl.arange(0, M_BUCKET)

    if ATOMIC_REDUCE:
        _atomic_splitk_epilogue(part, offs_m, offs_n, n_mask, M, N, part_ptr, ticket_ptr,
                                bias_ptr, y_ptr, h_ptr, HALF, HAS_BIAS, INTERPRET, ACT, GATED,
                                GATE_FIRST)  # fmt: skip
    else:
        p_ptrs = part_ptr + pid_k * (M * N) + offs_m[:, None] * N + offs_n[None, :]
        tl.store(p_ptrs, part, mask=(offs_m[:, None] < M) & n_mask[None, :])
        # the reduction kernel learns the split count of the config that actually ran
        tl.store(nsplit_ptr, tl.num_programs(1), mask=(pid_n == 0) & (pid_k == 0))


_LAST_CONFIG: list = [None]  # the config of the most recent launch
_LAST_REGISTERS: list = [None]  # registers per thread of its compiled kernel (GPU only)
# (segment ends, K, M bucket, sparsity bucket, dtype, atomic, device) -> chosen config
_CHOSEN: dict[tuple, dict] = {}


def last_autotune_config() -> dict | None:
    """The config of the most recent launch, tuned or explicit (None before any)."""
    cfg = _LAST_CONFIG[0]
    return dict(cfg) if cfg is not None else None


@functools.lru_cache(maxsize=16)
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _tuned_config(x, weight_t, thresholds, ends, bias, mb, sb, atomic, activation) -> dict:
    """The config of this call's tuning key: chosen once per process (``gemv_tuner``: from
    its disk cache, else by timing the pruner's candidates as decode runs them); with
    ``WAS_AUTOTUNE=0`` or a single candidate (interpreter), the first one, untimed. A call
    with an output activation shares the key of its plain shape (the activation adds work to
    the epilogue only)."""
    key = (ends, x.shape[1], mb, sb, x.dtype, atomic, x.device)
    cfg = _CHOSEN.get(key)
    if cfg is not None:
        return cfg
    candidates = candidate_configs(ends, x.shape[1], mb, sb, x.element_size(), atomic)
    if len(candidates) == 1 or not autotune_enabled():
        return config_dict(candidates[0])  # not memoised: WAS_AUTOTUNE may change
    copies: list = []
    reduction = "atomic" if atomic else "ordered"

    def calls_for(c: dict) -> list:
        if not copies:  # made on the first timing only (a cache hit allocates nothing)
            copies.extend(weight_copies(weight_t))
        return [functools.partial(sparse_gemv, x, w, thresholds, ends, bias, config=c,
                                  reduction=reduction, activation=activation)
                for w in copies]  # fmt: skip

    def n_regs(c: dict) -> int | None:
        calls_for(c)[0]()  # launched once: its compiled kernel's register count
        return _LAST_REGISTERS[0]

    name = tuning_key(_device_name(x.device), x.dtype, x.shape[1], ends, mb, sb, atomic)
    # the first few, not only the fastest, get capped variants: a config that lost by a
    # second wave may win with one CTA more per SM
    cap_variants = functools.partial(refinement_variants, n_regs=n_regs)
    cfg = choose_config(name, candidates, sequence_timer(calls_for), cap_variants)
    copies.clear()
    if not capturing():  # a call inside a capture got an untimed pick: not remembered
        _CHOSEN[key] = cfg
    return cfg


def _fail(msg: str):
    raise ValueError(f"sparse_gemv: {msg}")


def _check_segment_ends(segment_ends, n: int) -> tuple:
    if isinstance(segment_ends, torch.Tensor):
        _fail("segment_ends must be a sequence of Python ints, not a tensor (it sets the grid)")
    try:
        ends = tuple(operator.index(e) for e in segment_ends)
    except TypeError:
        _fail(f"segment_ends must be a sequence of ints, got {segment_ends!r}")
    if not ends:
        _fail("segment_ends is empty")
    if len(ends) > MAX_SEGMENTS:
        _fail(f"at most {MAX_SEGMENTS} segments are supported, got {len(ends)}")
    prev = 0
    for e in ends:
        if e <= prev:
            _fail(f"segment_ends must be strictly increasing positive ints, got {list(ends)}")
        prev = e
    if ends[-1] != n:
        _fail(f"segment_ends[-1] must equal N = {n} (weight_t.shape[1]), got {ends[-1]}")
    return ends


def _validate(x, weight_t, thresholds, segment_ends, bias):
    for name, t in (("x", x), ("weight_t", weight_t), ("thresholds", thresholds)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        _fail(f"x dtype {x.dtype} is not supported (float16, bfloat16, float32)")
    if x.dim() != 2:
        _fail(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    m, k = x.shape
    if not 1 <= m <= MAX_M:
        _fail(f"M = x.shape[0] must be in 1..{MAX_M} (decode GEMV), got {m}")
    if weight_t.dim() != 2 or weight_t.shape[0] != k:
        _fail(f"weight_t must be [K, N] with K = {k}, got shape {tuple(weight_t.shape)}")
    if weight_t.dtype != x.dtype:
        _fail(f"weight_t dtype {weight_t.dtype} differs from x dtype {x.dtype}")
    if not weight_t.is_contiguous():
        _fail("weight_t must be contiguous [K, N] row-major (store the weight transposed once)")
    n = weight_t.shape[1]
    if k == 0 or n == 0:
        _fail(f"empty problem: K = {k}, N = {n}")
    if k * n >= 2**31:
        _fail(f"K * N = {k * n} exceeds int32 indexing (2**31 elements)")
    ends = _check_segment_ends(segment_ends, n)
    if thresholds.dtype != torch.float32:
        _fail(f"thresholds must be float32, got {thresholds.dtype}")
    if thresholds.dim() != 2 or tuple(thresholds.shape) != (len(ends), k):
        _fail(
            f"thresholds shape must be [S, K] = [{len(ends)}, {k}] "
            f"(one row per segment), got {tuple(thresholds.shape)}"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            _fail(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dim() != 1 or bias.shape[0] != n:
            _fail(f"bias must be [N] = [{n}], got shape {tuple(bias.shape)}")
        if not bias.dtype.is_floating_point:
            _fail(f"bias must be floating point, got {bias.dtype}")
    devices = {t.device for t in (x, weight_t, thresholds) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        _fail(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    device = x.device
    if device.type != "cuda" and not interpret_mode():
        _fail(f"tensors must be on a CUDA device (or run with TRITON_INTERPRET=1), got {device}")
    return m, k, n, ends


def _segments_aligned(weight_t: torch.Tensor, ends: tuple) -> bool:
    """Segment ends multiples of 16 elements and weight_t at a 16-byte address: column tiles
    then start on 16-byte boundaries (vector loads; the wide path reads bf16/fp16 column pairs
    as int32, which would be misaligned on a weight view starting at an odd element)."""
    return all(e % 16 == 0 for e in ends) and weight_t.data_ptr() % 16 == 0


def _sizes_for(configs, ends: tuple, k: int) -> tuple:
    max_splits, max_list, max_tiles = 1, 1, 1
    for c in configs:
        kw = c.kwargs if hasattr(c, "kwargs") else c
        splits = num_k_splits(k, kw)
        tiles = column_tiles(ends, kw["BLOCK_N"])
        max_splits = max(max_splits, splits)
        max_tiles = max(max_tiles, tiles)
        if kw.get("COMPACT", 0):
            max_list = max(max_list, tiles * splits * kw["BLOCK_K"] * kw["K_ITERS"])
    return max_splits, max_list, max_tiles


def reserve_workspace_for(weight_t: torch.Tensor, segment_ends: Sequence[int],
                          max_rows: int = MAX_M) -> None:  # fmt: skip
    """Reserve the atomic split-K workspace for calls of up to ``max_rows`` rows on this
    weight [K, N] with these segments, whatever config the tuner picks. Outside CUDA-graph
    capture (the backend calls it at compile time)."""
    ends = _check_segment_ends(segment_ends, weight_t.shape[1])
    # one tile more: a fused gate_up launched as its two halves may take one more tile
    reserve_workspace(weight_t.device, min(max_rows, MAX_M) * weight_t.shape[1],
                      _tickets(_max_column_tiles(ends) + 1))  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _max_column_tiles(ends: tuple) -> int:
    """Most column tiles any config of the space launches for these segments (the atomic
    workspace holds one ticket per column tile)."""
    return max(column_tiles(ends, c.kwargs["BLOCK_N"]) for c in get_autotune_configs())


def _tickets(tiles: int) -> int:
    """Counters a launch of ``tiles`` column tiles uses: one a tile, and one a pair of gate
    and up tiles for a gated output activation (``splitk._atomic_splitk_epilogue``)."""
    return tiles + (tiles + 1) // 2


def _grid(ends: tuple, k: int):
    def grid(meta):
        return (
            column_tiles(ends, meta["BLOCK_N"]),
            num_k_splits(k, meta),
        )

    return grid


def sparse_gemv(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    thresholds: torch.Tensor,
    segment_ends: Sequence[int],
    bias: torch.Tensor | None = None,
    *,
    sparsity_hint: float | None = None,
    config: dict | None = None,
    reduction: str | None = None,
    activation: OutputActivation | None = None,
) -> torch.Tensor:
    """x [M, K] (M 1..16), weight_t [K, N] contiguous, thresholds [S, K] fp32, segment_ends
    increasing, last == N; bias [N] or None. Returns y [M, N] in x.dtype with
    y[m, n] = sum_k where(|x[m,k]| > thresholds[seg(n), k], x[m,k], 0) * weight_t[k, n] + bias[n].

    ``sparsity_hint``: expected fraction of dropped channels (e.g. the schedule's target); it
    only selects the autotuning bucket. ``config``: bypass autotuning with explicit meta
    parameters {BLOCK_N, BLOCK_K, K_ITERS, USE_DOT, COMPACT (default 0), WIDE (default 0;
    1 = the wide FMA tiles for M <= 4, see ``fma_wide``), num_warps,
    num_stages, maxnreg (optional register cap)} (tests, tuning). With the environment
    variable ``WAS_AUTOTUNE=0`` the pruner's first-ranked config runs untimed (quick checks;
    slower kernels). ``reduction``: how split-K parts are summed, ``"atomic"`` or
    ``"ordered"`` (``splitk.py``); default from ``WAS_SPLITK_REDUCTION`` (atomic).
    ``activation``: return act(gate) * up [M, N / 2] (or act(y)) instead of y, written by the
    atomic epilogue (``output_activation.py``; with the ordered reduction, computed after it).
    """
    if reduction is not None and reduction not in REDUCTION_MODES:
        _fail(f"reduction must be one of {REDUCTION_MODES}, got {reduction!r}")
    m, k, n, ends = _validate(x, weight_t, thresholds, segment_ends, bias)
    if activation is not None:
        try:
            activation.check(ends)
        except ValueError as e:
            _fail(str(e))
        if activation.gated and len(ends) == 1:  # a fused gate_up: its halves as two segments
            ends, thresholds = (n // 2, n), thresholds.expand(2, k)
    if x.stride(1) != 1:
        x = x.contiguous()
    if thresholds.stride(1) != 1:
        thresholds = thresholds.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    mb = m_bucket(m)
    sb = sparsity_bucket(sparsity_hint)
    seg_aligned = _segments_aligned(weight_t, ends)
    e_args = list(ends) + [n] * (MAX_SEGMENTS - len(ends))

    device = x.device
    want_atomic = (reduction if reduction is not None else reduction_mode()) == "atomic"

    def workspace_for(tiles: int):  # None on a GPU where none is reserved: ordered reduction
        return atomic_workspace(device, m * n, _tickets(tiles)) if want_atomic else None

    required = ("BLOCK_N", "BLOCK_K", "K_ITERS", "USE_DOT")
    tuned = config is None
    if tuned:
        # the workspace first: whether it exists decides the candidates' split-K bound
        workspace = workspace_for(_max_column_tiles(ends))
        config = _tuned_config(x, weight_t, thresholds, ends, bias, mb, sb, workspace is not None,
                               activation)  # fmt: skip
    missing = [key for key in required if key not in config]
    if missing:
        _fail(f"config is missing {missing}")
    if (config["USE_DOT"] or mb > 4) and config["BLOCK_K"] < 16:
        _fail("config: the dot path (USE_DOT or M > 4) needs BLOCK_K >= 16")
    meta = {key: int(config[key]) for key in required}
    meta["COMPACT"] = int(config.get("COMPACT", 0))
    wide = int(config.get("WIDE", 0))
    if wide not in (0, 1):
        _fail(f"config: WIDE must be 0 or 1, got {wide}")
    if wide:  # passed only when set: a config without WIDE launches the other paths
        if meta["USE_DOT"] or mb > 4:
            _fail("config: WIDE (wide FMA tiles) needs USE_DOT = 0 and M <= 4")
        meta["WIDE"] = wide
    pow2 = [meta["BLOCK_N"], meta["BLOCK_K"]]
    if meta["COMPACT"]:
        pow2.append(meta["BLOCK_K"] * meta["K_ITERS"])
    if any(v < 1 or v & (v - 1) for v in pow2) or meta["K_ITERS"] < 1:
        _fail("config: BLOCK_N, BLOCK_K (and BLOCK_K * K_ITERS with COMPACT) must be powers of 2")
    max_splits, list_size, tiles = _sizes_for([meta], ends, k)
    if not tuned:  # an explicit config: its own column tiles bound the tickets it needs
        workspace = workspace_for(tiles)
    atomic = workspace is not None

    kept_lists = torch.empty((list_size,), dtype=torch.int32, device=device)
    y = torch.empty((m, n), dtype=x.dtype, device=device)
    fused = activation is not None and atomic  # the epilogue writes h
    h = torch.empty((m, activation.columns(n)), dtype=x.dtype, device=device) if fused else y
    if workspace is not None:
        partials, tickets = workspace
        nsplit = tickets  # unused by the atomic epilogue
    else:
        partials = torch.empty((max_splits * m * n,), dtype=torch.float32, device=device)
        nsplit = torch.empty((1,), dtype=torch.int32, device=device)
        tickets = nsplit
    has_bias = bias is not None

    args = (
        x, weight_t, thresholds, partials, nsplit, kept_lists, tickets,
        bias if has_bias else y, y,
        m, n, k, x.stride(0), thresholds.stride(0),
        *e_args,
        sb, h, ends[0], mb, seg_aligned, interpret_mode(), atomic, has_bias,
    )  # fmt: skip
    launch = {}
    if config.get("maxnreg") and not interpret_mode():  # register cap (ptxas)
        launch["maxnreg"] = int(config["maxnreg"])
    if fused:
        meta.update(ACT=activation.code, GATED=int(activation.gated),
                    GATE_FIRST=int(activation.gate_first))  # fmt: skip
    _LAST_CONFIG[0] = config
    compiled = _sparse_gemv_kernel[_grid(ends, k)](
        *args,
        **meta,
        num_warps=config.get("num_warps", 4),
        num_stages=config.get("num_stages", 1),
        **launch,
    )
    _LAST_REGISTERS[0] = getattr(compiled, "n_regs", None)  # None in the interpreter

    if workspace is None:
        max_split_p2 = triton.next_power_of_2(max_splits)
        block = max(32, min(1024, 8192 // max_split_p2))
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](
            partials, nsplit, bias if has_bias else partials, y, m * n, n,
            HAS_BIAS=has_bias, MAX_SPLIT=max_split_p2, BLOCK=block,
            INTERPRET=interpret_mode(), num_warps=4,
        )  # fmt: skip
    if activation is not None and not fused:
        return activation_reference(y, activation, ends)
    return h
