# ruff: noqa: E501
"""Kernel variant for benchmarks/gemv_timeline.py (kernel_notes.md section 13): the wide FMA
tile of ``was_compile/kernels/fma_wide.py`` (masked mode only) with a trace. Each CTA writes
int64 [%globaltimer at the tile's start, %globaltimer after its loop, %smid, kept rows] to
``list_ptr`` (unused in masked mode; the probe passes a buffer of 4 per CTA). Only the tile
is redefined (its loop with the trace); the helpers are the package's. The probe puts it in
``fma_wide`` before ``triton_sparse_gemv`` is imported.
"""

from __future__ import annotations

import triton
import triton.language as tl

from was_compile.kernels.fma_wide import _wide_acc, _wide_out
from was_compile.kernels.gemv_rows import WEIGHT_EVICTION, keep_rows, load_rows, step_channels

__all__ = ["_fma_tile_wide"]


@triton.jit
def _globaltimer():
    return tl.inline_asm_elementwise(
        "mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1
    )


@triton.jit
def _smid():
    return tl.inline_asm_elementwise(
        "mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=True, pack=1
    )


@triton.jit
def _fma_tile_wide(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, n0,
                   n_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   K_ITERS: tl.constexpr, COMPACT: tl.constexpr,
                   SEG_ALIGNED: tl.constexpr):  # fmt: skip
    """``fma_wide._fma_tile_wide`` with the CTA's trace written to ``list_ptr`` (masked mode
    only: COMPACT would use that buffer for its kept-channel list)."""
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    t_start = _globaltimer()
    n_kept = tl.zeros([], dtype=tl.int32)
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
        n_kept += tl.sum((x0 != 0.0).to(tl.int32))
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
    t_loop = _globaltimer()
    trace = list_ptr.to(tl.pointer_type(tl.int64)) + 4 * (
        tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    )
    tl.store(trace, t_start)
    tl.store(trace + 1, t_loop)
    tl.store(trace + 2, _smid().to(tl.int64))
    tl.store(trace + 3, n_kept.to(tl.int64))
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, _wide_out(acc0, odd0, PACKED)[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, _wide_out(acc1, odd1, PACKED)[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, _wide_out(acc2, odd2, PACKED)[None, :], part)
        part = tl.where(rows == 3, _wide_out(acc3, odd3, PACKED)[None, :], part)
    return part
