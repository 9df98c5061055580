"""Kernel variant (kernel_notes section 23): the M = 1 sparse GEMV with no split-K across
CTAs, over narrow column tiles, in Gluon.

``fullk_narrow.py`` (one warp per CTA streaming all of K for 16-128 columns) reached 98% of
the copy limit dense but fell behind at 50% and more: a masked step requests only its kept
rows, so the bytes in flight shrink with the sparsity, and 448-1792 one-warp CTAs do not
make up for it. Here a CTA of W warps owns C = 16-128 columns and its warps split K
(warp w reads rows [w K/W, (w + 1) K/W)), so a CTA keeps W steps in flight and the warps'
sums meet once, in shared memory, at the end, as in ``warpk_gluon.py`` (whose CTAs, one per
256 columns, left SMs idle). Every CTA still reads the same kept rows: no reduction across
CTAs, no atomics, the same work for every CTA.

Layout of a step's weight tile [W, BLOCK_K, C]: a lane owns 8 contiguous columns (one 16-byte
load per kept row), C / 8 lanes across the columns, the other 32 / (C / 8) lanes down the
step's rows, warps on the first axis; x, the thresholds and the keep mask are its [W, BLOCK_K]
slice, so the mask reaches the weight loads with no layout conversion, and a step's rows are
summed in-thread and then across the lanes of the warp by shuffles.

Probe code (``benchmarks/warpk_probe.py --narrow``): M = 1, bf16 or fp16, at most 4 segments
whose ends are multiples of C, K a multiple of W * BLOCK_K. Gluon kernels do not run in the
interpreter.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kernel_variants.warpk_gluon import _stream_rows  # the K loop, shared

MAX_ENDS = 4


@gluon.jit
def _narrow_gemv_kernel(x_ptr, w_ptr, thr_ptr, y_ptr, N, K, E0, E1, E2, stride_thr,
                        C: gl.constexpr, W: gl.constexpr, BLOCK_K: gl.constexpr,
                        STEPS: gl.constexpr):  # fmt: skip
    """y[n0:n0 + C] for column tile program_id(0); threshold row = the tile's segment."""
    TC: gl.constexpr = C // 8  # lanes across the columns
    TR: gl.constexpr = 32 // TC  # lanes down the rows
    L3: gl.constexpr = gl.BlockedLayout([1, BLOCK_K // TR, 8], [1, TR, TC], [W, 1, 1],
                                        [2, 1, 0])  # fmt: skip
    LX: gl.constexpr = gl.SliceLayout(2, L3)  # [W, BLOCK_K]: a warp's rows of a step
    LACC: gl.constexpr = gl.SliceLayout(1, L3)  # [W, C]: a warp's partial sums
    LN: gl.constexpr = gl.SliceLayout(0, LACC)  # [C]
    n0 = gl.program_id(0) * C
    seg = (n0 >= E0).to(gl.int32) + (n0 >= E1).to(gl.int32) + (n0 >= E2).to(gl.int32)
    thr_row = thr_ptr + seg * stride_thr
    cols = n0 + gl.arange(0, C, layout=LN)
    cols3 = gl.expand_dims(gl.expand_dims(cols, 0), 1)  # [1, 1, C]
    warp = gl.arange(0, W, layout=gl.SliceLayout(1, LX))
    j = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LX))
    rows = gl.expand_dims(warp * (STEPS * BLOCK_K), 1) + gl.expand_dims(j, 0)  # [W, BLOCK_K]
    acc = _stream_rows(x_ptr, w_ptr, thr_row, rows, cols3, gl.zeros([W, C], gl.float32, LACC),
                       N, K, BLOCK_K, STEPS)  # fmt: skip
    out = gl.sum(acc, axis=0)
    gl.store(y_ptr + cols, out.to(y_ptr.dtype.element_ty))


def narrow_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor,
                segment_ends, cols: int = 64, warps: int = 4, block_k: int = 32,
                maxnreg: int | None = None) -> torch.Tensor:  # fmt: skip
    """y [1, N] = where(|x| > thresholds[seg], x, 0) @ weight_t; see the module docstring."""
    k, n = weight_t.shape
    ends = tuple(segment_ends)
    lanes_down = 32 // (cols // 8)
    if (x.shape[0] != 1 or len(ends) > MAX_ENDS or any(e % cols for e in ends)
            or k % (warps * block_k) or cols not in (16, 32, 64, 128, 256)
            or block_k % lanes_down):  # fmt: skip
        raise ValueError(f"narrow_gemv: M = 1, at most {MAX_ENDS} segments of multiples of "
                         f"{cols}, K a multiple of {warps * block_k}, BLOCK_K a multiple of "
                         f"{lanes_down}")  # fmt: skip
    e = list(ends[:-1]) + [n] * (MAX_ENDS - len(ends))
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    thr = thresholds.contiguous()
    kw = {"maxnreg": maxnreg} if maxnreg else {}
    _narrow_gemv_kernel[(n // cols,)](
        x, weight_t, thr, y, n, k, e[0], e[1], e[2], thr.stride(0) if thr.shape[0] > 1 else 0,
        C=cols, W=warps, BLOCK_K=block_k, STEPS=k // (warps * block_k), num_warps=warps, **kw,
    )  # fmt: skip
    return y
