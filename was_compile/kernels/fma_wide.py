"""FMA path of the sparse GEMV with wide tiles: every thread streams many weight rows.

Why (benchmarks/kernel_notes.md, sections 3-4, fix 2; section 8 has the measurements): in the
default FMA path each thread owns a few rows x 8 columns of a [BLOCK_K, BLOCK_N] tile with an
fp32 accumulator per element, so 4 x 16-byte loads per thread is all ptxas keeps in flight,
and each step's weight loads wait on that step's x -> threshold -> mask loads.

Here BLOCK_N = 256 x num_warps (16-bit weights): the warps split the columns, a lane owns 8
contiguous columns (one 16-byte vector) of every one of the step's BLOCK_K rows, so

* a lane issues BLOCK_K independent 16-byte loads per step in one burst (16 rows: 256 bytes)
  and a warp instruction reads one whole 512-byte row: a dropped channel removes whole load
  instructions;
* the sum over the step's rows stays inside the thread (``tl.sum(axis=0)`` of a tile whose
  rows all live in one thread: no shuffle, no barrier), so the accumulator is [BLOCK_N],
  8 fp32 registers per lane and row of x;
* x and thresholds of step i + 1 are requested, and its keep mask computed, before step i's
  tile is consumed, so the weight loads of a step never wait for loads of the same iteration.

Small CTAs (1-2 warps) and short chunks (64-256 channels) give each SM 16-30 independent
warps: that, not a deeper per-warp pipeline, hides the HBM latency. (Splitting a step's rows
over warps, a [ROWS, WARPS_K, BLOCK_N] tile, made Triton 3.9 reload x in a second layout and
convert it through shared memory with barriers every step, and ran 1.5-1.9x slower on the
H100.)

Same semantics as the other paths: keep[m, k] = |x[m, k]| > tau[k] compared in fp32, x of a
dropped entry zeroed per row, the union over rows decides which weight rows are read, fp32
accumulation. Masked (contiguous channels) and COMPACT (the CTA's kept-channel list) both work.
Selected by ``WIDE = 1`` in a config; M <= 4 rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .gemv_rows import WEIGHT_EVICTION, keep_rows, load_rows, step_channels

__all__ = ["_fma_tile_wide"]


@triton.jit
def _unpack_pair(v, IS_BF16: tl.constexpr):
    """int32 holding two 16-bit values (element 2i in the low half) -> both in fp32."""
    if IS_BF16:
        lo = (v << 16).to(tl.float32, bitcast=True)
        hi = (v & -65536).to(tl.float32, bitcast=True)
    else:
        lo = v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _wide_acc(acc, odd, x, w, PACKED: tl.constexpr, IS_BF16: tl.constexpr):
    """acc (+ odd) += sum over the step's rows of x[k] * w[k, :]; PACKED: w holds column pairs
    as int32 (even columns into acc, odd ones into odd: one instruction per value to unpack)."""
    if PACKED:
        lo, hi = _unpack_pair(w, IS_BF16)
        acc += tl.sum(x[:, None] * lo, axis=0)
        odd += tl.sum(x[:, None] * hi, axis=0)
    else:
        acc += tl.sum(x[:, None] * w.to(tl.float32), axis=0)
    return acc, odd


@triton.jit
def _wide_out(acc, odd, PACKED: tl.constexpr):
    """The [BLOCK_N] row of partial sums (PACKED: even and odd columns interleaved)."""
    if PACKED:
        out = tl.interleave(acc, odd)
    else:
        out = acc
    return out


@triton.jit
def _fma_tile_wide(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, n0,
                   n_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   K_ITERS: tl.constexpr, COMPACT: tl.constexpr,
                   SEG_ALIGNED: tl.constexpr):  # fmt: skip
    """Partial sums [BLOCK_M, BLOCK_N] (fp32) of columns [n0, n0 + BLOCK_N) over this CTA's
    chunk of BLOCK_K * K_ITERS channels starting at k_start (rows >= M are zero).

    COMPACT: the loop runs cdiv(kept count, BLOCK_K) steps, not K_ITERS: the work (and the
    instructions) follow the kept rows. 16-bit weights with segment ends that are multiples
    of 16 are loaded as int32 column pairs (PACKED)."""
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    PACKED: tl.constexpr = SEG_ALIGNED and w_ptr.dtype.element_ty != tl.float32
    IS_BF16: tl.constexpr = w_ptr.dtype.element_ty == tl.bfloat16
    if PACKED:  # int32 view: column pairs (segment starts and ends are even)
        wq = w_ptr.to(tl.pointer_type(tl.int32))
        NQ = N // 2
        offs_q = tl.multiple_of(n0 // 2, 8) + tl.arange(0, BLOCK_N // 2)
        q_mask = offs_q < tl.multiple_of(n_end // 2, 8)
        ACC_N: tl.constexpr = BLOCK_N // 2
    else:
        wq = w_ptr
        NQ = N
        offs_q = n0 + tl.arange(0, BLOCK_N)
        q_mask = offs_q < n_end
        ACC_N: tl.constexpr = BLOCK_N
    j = tl.arange(0, BLOCK_K)
    offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
    thr, r0, r1, r2, r3 = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
    kept, x0, x1, x2, x3 = keep_rows(thr, r0, r1, r2, r3, BLOCK_M)
    acc0 = tl.zeros([ACC_N], dtype=tl.float32)  # even columns when PACKED
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    odd0 = acc0  # odd columns when PACKED
    odd1 = acc0
    odd2 = acc0
    odd3 = acc0
    if COMPACT:
        steps = tl.cdiv(count, BLOCK_K)
    else:
        steps = K_ITERS
    for _ in range(steps):
        w = tl.load(wq + offs_k[:, None] * NQ + offs_q[None, :],
                    mask=kept[:, None] & q_mask[None, :], other=0,
                    eviction_policy=WEIGHT_EVICTION)  # fmt: skip
        # the next step's rows are requested and its mask computed while this step's weights
        # are in flight (past the chunk nothing is kept: the last request reads nothing)
        j += BLOCK_K
        offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
        thr, r0n, r1n, r2n, r3n = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
        kept, y0, y1, y2, y3 = keep_rows(thr, r0n, r1n, r2n, r3n, BLOCK_M)
        acc0, odd0 = _wide_acc(acc0, odd0, x0, w, PACKED, IS_BF16)
        if BLOCK_M >= 2:
            acc1, odd1 = _wide_acc(acc1, odd1, x1, w, PACKED, IS_BF16)
        if BLOCK_M >= 4:
            acc2, odd2 = _wide_acc(acc2, odd2, x2, w, PACKED, IS_BF16)
            acc3, odd3 = _wide_acc(acc3, odd3, x3, w, PACKED, IS_BF16)
        x0 = y0
        x1 = y1
        x2 = y2
        x3 = y3
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, _wide_out(acc0, odd0, PACKED)[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, _wide_out(acc1, odd1, PACKED)[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, _wide_out(acc2, odd2, PACKED)[None, :], part)
        part = tl.where(rows == 3, _wide_out(acc3, odd3, PACKED)[None, :], part)
    return part
