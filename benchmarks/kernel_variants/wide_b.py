# ruff: noqa: E501
"""Kernel variant probed on the H100 (benchmarks/tile_probe.py --wide-file, kernel_notes.md
section 8). Kept for reading: it has the signature of the wide path at that time (a
``WARPS_K`` argument; the config key WARPS_K >= 1 selected the path, now ``WIDE = 1``).
Variant B: the 2-D wide tile with the next keep mask computed after the FMAs.
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
        wf = w.to(tl.float32)
        acc0 += tl.sum(x0[:, None] * wf, axis=0)
        if BLOCK_M >= 2:
            acc1 += tl.sum(x1[:, None] * wf, axis=0)
        if BLOCK_M >= 4:
            acc2 += tl.sum(x2[:, None] * wf, axis=0)
            acc3 += tl.sum(x3[:, None] * wf, axis=0)
        kept, x0, x1, x2, x3 = keep_rows(thr, r0n, r1n, r2n, r3n, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, acc0[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, acc1[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, acc2[None, :], part)
        part = tl.where(rows == 3, acc3[None, :], part)
    return part
