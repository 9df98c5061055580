# ruff: noqa: E501
"""Kernel variant probed on the H100 (benchmarks/tile_probe.py --wide-file, kernel_notes.md
section 8). Kept for reading: it has the signature of the wide path at that time (a
``WARPS_K`` argument; the config key WARPS_K >= 1 selected the path, now ``WIDE = 1``).
Variant C: a [ROWS, WARPS_K, BLOCK_N] tile (warp groups split the rows).
"""

from __future__ import annotations

import triton
import triton.language as tl

from was_compile.kernels.gemv_rows import keep_rows, load_rows, step_channels

__all__ = ["_fma_tile_wide"]


@triton.jit
def _fma_tile_wide(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, n0,
                   n_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   K_ITERS: tl.constexpr, WARPS_K: tl.constexpr, COMPACT: tl.constexpr):  # fmt: skip
    """Partial sums [BLOCK_M, BLOCK_N] (fp32) of columns [n0, n0 + BLOCK_N) over this CTA's
    chunk of BLOCK_K * K_ITERS channels starting at k_start (rows >= M are zero)."""
    ROWS: tl.constexpr = BLOCK_K // WARPS_K
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    # entry j of a step = group * ROWS + row: a warp group owns ROWS consecutive channels
    j = tl.arange(0, WARPS_K)[None, :, None] * ROWS + tl.arange(0, ROWS)[:, None, None]
    offs_n = n0 + tl.arange(0, BLOCK_N)[None, None, :]
    n_mask = offs_n < n_end
    offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
    thr, r0, r1, r2, r3 = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
    _, x0, x1, x2, x3 = keep_rows(thr, r0, r1, r2, r3, BLOCK_M)
    acc0 = tl.zeros([WARPS_K, BLOCK_N], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    for _ in range(K_ITERS):
        # rows read = rows where some x survived. Derived from the zeroed x rather than
        # carried as a mask: a carried mask led Triton (3.9) to load the rows a second time in
        # another layout and convert it through shared memory, with barriers, every step.
        # A kept entry equal to 0 contributes nothing, so skipping its row changes nothing.
        kept = x0 != 0.0
        if BLOCK_M >= 2:
            kept = kept | (x1 != 0.0)
        if BLOCK_M >= 4:
            kept = kept | (x2 != 0.0) | (x3 != 0.0)
        w = tl.load(w_ptr + offs_k * N + offs_n, mask=kept & n_mask, other=0.0)
        # the next step's rows are requested while this step's weights are in flight (past
        # the chunk nothing is kept: the last iteration's request reads nothing)
        j += BLOCK_K
        offs_k, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
        thr, r0n, r1n, r2n, r3n = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M)
        wf = w.to(tl.float32)
        acc0 += tl.sum(x0 * wf, axis=0)
        if BLOCK_M >= 2:
            acc1 += tl.sum(x1 * wf, axis=0)
        if BLOCK_M >= 4:
            acc2 += tl.sum(x2 * wf, axis=0)
            acc3 += tl.sum(x3 * wf, axis=0)
        _, x0, x1, x2, x3 = keep_rows(thr, r0n, r1n, r2n, r3n, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, tl.sum(acc0, axis=0)[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, tl.sum(acc1, axis=0)[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, tl.sum(acc2, axis=0)[None, :], part)
        part = tl.where(rows == 3, tl.sum(acc3, axis=0)[None, :], part)
    return part
