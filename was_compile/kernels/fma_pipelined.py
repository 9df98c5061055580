"""Experimental FMA path of the sparse GEMV (``PIPE = 1``): software pipelining by hand.

The default FMA path (``_fma_tile`` in ``triton_sparse_gemv``) keeps one weight tile in
flight per warp on sm_90 (ptxas waits on the rotated prefetch before the back-edge) and each
step's weight loads wait on that step's x/threshold loads. Here the loop is unrolled by two
with ping-pong weight buffers (packed int32 pairs for fp16/bf16, unpacked where used), each
re-loaded right after it is consumed, and the rows (x, thresholds, keep masks) are loaded one
iteration (two steps) ahead of their tiles. Same semantics as the default path. Off unless an
explicit config or ``WAS_KERNEL_EXPERIMENTAL=1`` asks for it; SASS evidence and the GPU
command that will measure it: benchmarks/kernel_notes.md, section 6.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .gemv_rows import keep_rows, load_rows, step_channels

__all__ = ["_fma_tile_pipe"]


@triton.jit
def _fma_weights(w_ptr, offs_k, kept, N, offs_n, n_mask):
    """Weight tile of one step: rows offs_k (kept ones only) x columns offs_n."""
    return tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :],
                   mask=kept[:, None] & n_mask[None, :], other=0.0)  # fmt: skip


@triton.jit
def _fma_acc(acc0, acc1, acc2, acc3, x0, x1, x2, x3, wf, BLOCK_M: tl.constexpr):
    acc0 += x0[:, None] * wf
    if BLOCK_M >= 2:
        acc1 += x1[:, None] * wf
    if BLOCK_M >= 4:
        acc2 += x2[:, None] * wf
        acc3 += x3[:, None] * wf
    return acc0, acc1, acc2, acc3


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
def _pipe_stage(acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, w, x0, x1, x2, x3,
                offs_r, ok_r, thr, r0, r1, r2, r3, offs_l, ok_l, j_next,
                x_ptr, wq, thr_ptr, list_ptr, count, M, NQ, K, stride_xm, k_start, offs_q,
                q_mask, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, COMPACT: tl.constexpr,
                PACKED: tl.constexpr, IS_BF16: tl.constexpr):  # fmt: skip
    """PIPE = 1, one buffer's share of a loop iteration (buffer of step s): consume the tile
    of step s; from the rows of step s + 2 (loaded one iteration ago) compute the keep mask
    and issue that step's weight tile into the buffer; issue the rows of step s + 4 (their
    channels are known: loaded one iteration ago for COMPACT); COMPACT: load the channels of
    step s + 6 (entries j_next)."""
    if PACKED:
        lo, hi = _unpack_pair(w, IS_BF16)
        acc0, acc1, acc2, acc3 = _fma_acc(acc0, acc1, acc2, acc3, x0, x1, x2, x3, lo, BLOCK_M)
        odd0, odd1, odd2, odd3 = _fma_acc(odd0, odd1, odd2, odd3, x0, x1, x2, x3, hi, BLOCK_M)
    else:
        acc0, acc1, acc2, acc3 = _fma_acc(acc0, acc1, acc2, acc3, x0, x1, x2, x3,
                                          w.to(tl.float32), BLOCK_M)  # fmt: skip
    if not COMPACT:  # contiguous channels: recomputed from j, not carried (registers)
        BK: tl.constexpr = j_next.shape[0]
        offs_r, ok_r = step_channels(list_ptr, count, K, k_start, j_next - 4 * BK, CHUNK, COMPACT)
        offs_l, ok_l = step_channels(list_ptr, count, K, k_start, j_next - 2 * BK, CHUNK, COMPACT)
    kept, x0, x1, x2, x3 = keep_rows(thr, r0, r1, r2, r3, BLOCK_M)
    w = _fma_weights(wq, offs_r, kept, NQ, offs_q, q_mask)
    thr, r0, r1, r2, r3 = load_rows(x_ptr, thr_ptr, offs_l, ok_l, M, stride_xm, BLOCK_M)
    offs_r = offs_l
    ok_r = ok_l
    offs_l, ok_l = step_channels(list_ptr, count, K, k_start, j_next, CHUNK, COMPACT)
    return (acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, w, x0, x1, x2, x3,
            offs_r, ok_r, thr, r0, r1, r2, r3, offs_l, ok_l)  # fmt: skip


@triton.jit
def _fma_tile_pipe(x_ptr, w_ptr, thr_ptr, list_ptr, count, M, N, K, stride_xm, k_start, offs_n,
                   n_mask, n0, n_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, K_ITERS: tl.constexpr, COMPACT: tl.constexpr,
                   SEG_ALIGNED: tl.constexpr):  # fmt: skip
    """PIPE = 1 (experimental): the FMA path unrolled by two with ping-pong weight buffers.

    Even steps use buffer A, odd steps buffer B; each buffer is re-loaded right after it is
    consumed, so nothing in flight has to be copied at the back-edge (ptxas turned the
    one-step prefetch of ``_fma_tile`` back into one tile in flight: the rotation
    ``w = w_next`` waits on the load). With 16-bit weights and segment ends that are multiples
    of 16, the tiles are loaded and carried as packed int32 pairs and unpacked only where they
    are consumed (carried 16-bit values get unpacked at the end of the loop body, which waits
    on the loads just issued); two accumulators per row (even, odd columns), interleaved at
    the end. A step's rows (x, thresholds) are loaded two steps (one loop iteration) ahead of
    its weight tile and carried as loaded; its keep mask is computed in the next iteration,
    right before its weight tile is issued, so a weight load never waits on x or threshold
    loads issued in the same iteration. COMPACT: the kept-list entries are loaded one more
    iteration ahead. An odd K_ITERS runs one extra, empty step (past the chunk nothing is
    kept, so it reads nothing); so do the prefetches past the end."""
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    PAIRS: tl.constexpr = (K_ITERS + 1) // 2
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
        offs_q = offs_n
        q_mask = n_mask
        ACC_N: tl.constexpr = BLOCK_N
    j = tl.arange(0, BLOCK_K)
    # prologue, per buffer (A: steps 0, 2, 4, 6; B: steps 1, 3, 5, 7): weight tile of its
    # first step, rows of its second, channels of its third
    o, ok = step_channels(list_ptr, count, K, k_start, j, CHUNK, COMPACT)
    t_, q0, q1, q2, q3 = load_rows(x_ptr, thr_ptr, o, ok, M, stride_xm, BLOCK_M)
    kept, a0, a1, a2, a3 = keep_rows(t_, q0, q1, q2, q3, BLOCK_M)
    wa = _fma_weights(wq, o, kept, NQ, offs_q, q_mask)
    o, ok = step_channels(list_ptr, count, K, k_start, j + BLOCK_K, CHUNK, COMPACT)
    t_, q0, q1, q2, q3 = load_rows(x_ptr, thr_ptr, o, ok, M, stride_xm, BLOCK_M)
    kept, b0, b1, b2, b3 = keep_rows(t_, q0, q1, q2, q3, BLOCK_M)
    wb = _fma_weights(wq, o, kept, NQ, offs_q, q_mask)
    oa, oka = step_channels(list_ptr, count, K, k_start, j + 2 * BLOCK_K, CHUNK, COMPACT)
    ta, ra0, ra1, ra2, ra3 = load_rows(x_ptr, thr_ptr, oa, oka, M, stride_xm, BLOCK_M)
    ob, okb = step_channels(list_ptr, count, K, k_start, j + 3 * BLOCK_K, CHUNK, COMPACT)
    tb, rb0, rb1, rb2, rb3 = load_rows(x_ptr, thr_ptr, ob, okb, M, stride_xm, BLOCK_M)
    la, oka_l = step_channels(list_ptr, count, K, k_start, j + 4 * BLOCK_K, CHUNK, COMPACT)
    lb, okb_l = step_channels(list_ptr, count, K, k_start, j + 5 * BLOCK_K, CHUNK, COMPACT)
    acc0 = tl.zeros([BLOCK_K, ACC_N], dtype=tl.float32)  # even columns when PACKED
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    odd0 = acc0  # odd columns (PACKED only)
    odd1 = acc0
    odd2 = acc0
    odd3 = acc0
    for _ in range(PAIRS):
        j += 2 * BLOCK_K  # j: entries of step 2t + 2
        (acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, wa, a0, a1, a2, a3,
         oa, oka, ta, ra0, ra1, ra2, ra3, la, oka_l) = _pipe_stage(
            acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, wa, a0, a1, a2, a3,
            oa, oka, ta, ra0, ra1, ra2, ra3, la, oka_l, j + 4 * BLOCK_K,
            x_ptr, wq, thr_ptr, list_ptr, count, M, NQ, K, stride_xm, k_start, offs_q, q_mask,
            BLOCK_M, CHUNK, COMPACT, PACKED, IS_BF16)  # fmt: skip
        (acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, wb, b0, b1, b2, b3,
         ob, okb, tb, rb0, rb1, rb2, rb3, lb, okb_l) = _pipe_stage(
            acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, wb, b0, b1, b2, b3,
            ob, okb, tb, rb0, rb1, rb2, rb3, lb, okb_l, j + 5 * BLOCK_K,
            x_ptr, wq, thr_ptr, list_ptr, count, M, NQ, K, stride_xm, k_start, offs_q, q_mask,
            BLOCK_M, CHUNK, COMPACT, PACKED, IS_BF16)  # fmt: skip
    s0 = tl.sum(acc0, axis=0)
    s1 = tl.sum(acc1, axis=0)
    s2 = tl.sum(acc2, axis=0)
    s3 = tl.sum(acc3, axis=0)
    if PACKED:  # column 2i from the even accumulator, 2i + 1 from the odd one
        s0 = tl.interleave(s0, tl.sum(odd0, axis=0))
        s1 = tl.interleave(s1, tl.sum(odd1, axis=0))
        s2 = tl.interleave(s2, tl.sum(odd2, axis=0))
        s3 = tl.interleave(s3, tl.sum(odd3, axis=0))
    rows = tl.arange(0, BLOCK_M)[:, None]
    part = tl.where(rows == 0, s0[None, :], 0.0)
    if BLOCK_M >= 2:
        part = tl.where(rows == 1, s1[None, :], part)
    if BLOCK_M >= 4:
        part = tl.where(rows == 2, s2[None, :], part)
        part = tl.where(rows == 3, s3[None, :], part)
    return part
