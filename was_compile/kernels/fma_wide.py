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

Small CTAs (1-2 warps) and short chunks (64-128 channels) give each SM 16-30 independent
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

from .gemv_rows import keep_rows, load_rows, step_channels

__all__ = ["_fma_tile_wide"]


@triton.jit
def _fma_tile_wide(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, n0,
                   n_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   K_ITERS: tl.constexpr, COMPACT: tl.constexpr):  # fmt: skip
    """Partial sums [BLOCK_M, BLOCK_N] (fp32) of columns [n0, n0 + BLOCK_N) over this CTA's
    chunk of BLOCK_K * K_ITERS channels starting at k_start (rows >= M are zero)."""
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    j = tl.arange(0, BLOCK_K)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_end
    offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
    thr, r0, r1, r2, r3 = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
    kept, x0, x1, x2, x3 = keep_rows(thr, r0, r1, r2, r3, BLOCK_M)
    acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    for _ in range(K_ITERS):
        w = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :],
                    mask=kept[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        j += BLOCK_K
        offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
        thr, r0n, r1n, r2n, r3n = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
        kept, y0, y1, y2, y3 = keep_rows(thr, r0n, r1n, r2n, r3n, BLOCK_M)
        wf = w.to(tl.float32)
        acc0 += tl.sum(x0[:, None] * wf, axis=0)
        if BLOCK_M >= 2:
            acc1 += tl.sum(x1[:, None] * wf, axis=0)
        if BLOCK_M >= 4:
            acc2 += tl.sum(x2[:, None] * wf, axis=0)
            acc3 += tl.sum(x3[:, None] * wf, axis=0)
        x0 = y0
        x1 = y1
        x2 = y2
        x3 = y3
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, acc0[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, acc1[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, acc2[None, :], part)
        part = tl.where(rows == 3, acc3[None, :], part)
    return part
