# ruff: noqa: E501
"""Kernel variant probed on the H100 (benchmarks/tile_probe.py --wide-file, kernel_notes.md
section 8). Kept for reading: it has the signature of the wide path at that time (a
``WARPS_K`` argument; the config key WARPS_K >= 1 selected the path, now ``WIDE = 1``).
Variant D: row by row, scalar x / thresholds, [BLOCK_N] accumulator (pure FFMA).
"""

import triton
import triton.language as tl


@triton.jit
def _fma_tile_wide(
    x_ptr,
    w_ptr,
    thr_ptr,
    list_ptr,
    count,
    M,
    N,
    K,
    stride_xm,
    k_start,
    n0,
    n_end,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    K_ITERS: tl.constexpr,
    WARPS_K: tl.constexpr,
    COMPACT: tl.constexpr,
):
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_end
    w_cols = w_ptr + offs_n
    zn = tl.zeros_like(offs_n)
    acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    k_lim = tl.minimum(K, k_start + CHUNK)
    for it in range(K_ITERS):
        for r in tl.static_range(BLOCK_K):
            e = it * BLOCK_K + r
            if COMPACT:
                ok = e < count
                k = tl.load(list_ptr + e, mask=ok, other=0)
            else:
                k = k_start + e
                ok = k < k_lim
            zk = k * 0  # tensor compares (the interpreter rejects bool & python bool)
            t = tl.load(thr_ptr + k, mask=ok, other=float("inf"))
            x0 = tl.load(x_ptr + k, mask=ok, other=0.0).to(tl.float32)
            x0 = tl.where(tl.abs(x0) > t, x0, 0.0)
            kept = x0 != 0.0
            if BLOCK_M >= 2:
                x1 = tl.load(x_ptr + stride_xm + k, mask=ok & (zk < M - 1), other=0.0).to(
                    tl.float32
                )
                x1 = tl.where(tl.abs(x1) > t, x1, 0.0)
                kept = kept | (x1 != 0.0)
            if BLOCK_M >= 4:
                x2 = tl.load(x_ptr + 2 * stride_xm + k, mask=ok & (zk < M - 2), other=0.0).to(
                    tl.float32
                )
                x3 = tl.load(x_ptr + 3 * stride_xm + k, mask=ok & (zk < M - 3), other=0.0).to(
                    tl.float32
                )
                x2 = tl.where(tl.abs(x2) > t, x2, 0.0)
                x3 = tl.where(tl.abs(x3) > t, x3, 0.0)
                kept = kept | (x2 != 0.0) | (x3 != 0.0)
            w = tl.load(w_cols + k * N, mask=n_mask & (zn + kept.to(tl.int32) > 0), other=0.0).to(
                tl.float32
            )
            acc0 += x0 * w
            if BLOCK_M >= 2:
                acc1 += x1 * w
            if BLOCK_M >= 4:
                acc2 += x2 * w
                acc3 += x3 * w
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, acc0[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, acc1[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, acc2[None, :], part)
        part = tl.where(rows == 3, acc3[None, :], part)
    return part
