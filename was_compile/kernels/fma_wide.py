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
accumulation. Masked (contiguous channels) and COMPACT (the CTA's kept-channel list) both work;
masked tiles can also take their steps from a per-tile counter (DYNAMIC).
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
def _fetch_step(ctr_ptr, INTERPRET: tl.constexpr):
    """Take the next step index from the counter (one warp per CTA). On the GPU lane 0 issues
    the atomic in inline PTX and keeps the result in a register (the other lanes hold 0):
    nothing waits for it until ``_shared_step``. Triton's own scalar atomic would broadcast the
    result through shared memory at once, stalling the warp for the round trip every step."""
    if INTERPRET:
        v = tl.atomic_add(ctr_ptr, 1, sem="relaxed")
    else:
        v = tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 l; mov.u32 l, %laneid; setp.eq.u32 p, l, 0; "
            "mov.u32 $0, 0; @p atom.relaxed.gpu.global.add.u32 $0, [$1], 1; }",
            "=r,l", [ctr_ptr], dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip
    return v


@triton.jit
def _shared_step(v, INTERPRET: tl.constexpr):
    """Lane 0's fetched step index in every lane (waits here for the atomic's result)."""
    if INTERPRET:
        out = v
    else:
        out = tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, 0, 0x1f, 0xffffffff;",
                                        "=r,r", [v], dtype=tl.int32, is_pure=False,
                                        pack=1)  # fmt: skip
    return out


@triton.jit
def _wide_acc_rows(acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, x0, x1, x2, x3, w,
                   BLOCK_M: tl.constexpr, PACKED: tl.constexpr, IS_BF16: tl.constexpr):  # fmt: skip
    """_wide_acc for each of the BLOCK_M rows (1, 2 or 4) of one step."""
    acc0, odd0 = _wide_acc(acc0, odd0, x0, w, PACKED, IS_BF16)
    if BLOCK_M >= 2:
        acc1, odd1 = _wide_acc(acc1, odd1, x1, w, PACKED, IS_BF16)
    if BLOCK_M >= 4:
        acc2, odd2 = _wide_acc(acc2, odd2, x2, w, PACKED, IS_BF16)
        acc3, odd3 = _wide_acc(acc3, odd3, x3, w, PACKED, IS_BF16)
    return acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3


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
                   K_ITERS: tl.constexpr, COMPACT: tl.constexpr, SEG_ALIGNED: tl.constexpr,
                   ctr_ptr, DYNAMIC: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """Partial sums [BLOCK_M, BLOCK_N] (fp32) of columns [n0, n0 + BLOCK_N) over this CTA's
    chunk of BLOCK_K * K_ITERS channels starting at k_start (rows >= M are zero).

    COMPACT: the loop runs cdiv(kept count, BLOCK_K) steps, not K_ITERS: the work (and the
    instructions) follow the kept rows. 16-bit weights with segment ends that are multiples
    of 16 are loaded as int32 column pairs (PACKED).

    DYNAMIC (masked only): no fixed chunk. The CTAs of a column tile take its steps of
    BLOCK_K channels, over all of K, one at a time from the tile's counter at ``ctr_ptr``
    (zero before the launch; the epilogue's last CTA re-zeroes it), so a CTA whose loads come
    back late takes fewer steps and the CTAs' loops end together (kernel_notes section 13).
    Each step's index is fetched one iteration before its x is loaded, so the fetch waits on
    nothing; a CTA's partial sum still covers one column tile, so the reduction is unchanged."""
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
    if DYNAMIC:
        n_steps = tl.cdiv(K, BLOCK_K)
        step = _shared_step(_fetch_step(ctr_ptr, INTERPRET), INTERPRET)
        fetched = _fetch_step(ctr_ptr, INTERPRET)  # the step after, used one iteration later
        fetched2 = _fetch_step(ctr_ptr, INTERPRET)  # and the one after, two iterations later
        # column tiles start at different points of K (step s reads step (s + rot) mod n):
        # the rows read at one moment then spread over the whole weight, as with fixed chunks
        rot = (tl.program_id(0) * n_steps) // tl.num_programs(0)
        offs_k = ((step + rot) % n_steps) * BLOCK_K + j
        offs_k = tl.where(step < n_steps, offs_k, K)
        ok = offs_k < K
    else:
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
    if DYNAMIC:
        # a CTA takes at most `cap` steps, twice its even share (the CTAs together can take
        # twice the steps there are, so none is left), and fetches no index it could not
        # process: a for loop whose spare iterations skip everything (Triton 3.6 miscompiles
        # this loop written as a while loop)
        cap = 2 * tl.cdiv(n_steps, tl.num_programs(1)) + 3
        for it in range(cap):
            if step < n_steps:
                w = tl.load(wq + offs_k[:, None] * NQ + offs_q[None, :],
                            mask=kept[:, None] & q_mask[None, :], other=0,
                            eviction_policy=WEIGHT_EVICTION)  # fmt: skip
                step_next = _shared_step(fetched, INTERPRET)  # fetched two iterations ago
                fetched = fetched2
                if it + 3 < cap:
                    fetched2 = _fetch_step(ctr_ptr, INTERPRET)
                else:  # this CTA may take no step after fetched: fetch nothing more
                    fetched2 = fetched2 * 0 + n_steps
                offs_k = ((step_next + rot) % n_steps) * BLOCK_K + j
                offs_k = tl.where(step_next < n_steps, offs_k, K)  # past the last: none kept
                ok = offs_k < K
                thr, r0n, r1n, r2n, r3n = load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm,
                                                    BLOCK_M)  # fmt: skip
                kept, y0, y1, y2, y3 = keep_rows(thr, r0n, r1n, r2n, r3n, BLOCK_M)
                acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3 = _wide_acc_rows(
                    acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, x0, x1, x2, x3, w,
                    BLOCK_M, PACKED, IS_BF16)  # fmt: skip
                x0 = y0
                x1 = y1
                x2 = y2
                x3 = y3
                step = step_next
        # wait for the last (unused) fetch: the epilogue's ticket then orders it before the
        # counter's reset by the tile's last CTA
        step = _shared_step(fetched, INTERPRET) + _shared_step(fetched2, INTERPRET)
    else:
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
            acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3 = _wide_acc_rows(
                acc0, acc1, acc2, acc3, odd0, odd1, odd2, odd3, x0, x1, x2, x3, w,
                BLOCK_M, PACKED, IS_BF16)  # fmt: skip
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
