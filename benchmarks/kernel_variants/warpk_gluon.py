"""Kernel variant (kernel_notes section 20): the M = 1 sparse GEMV with no split-K reduction
across CTAs, written in Gluon (Triton's layout-explicit dialect, ``triton.experimental.gluon``).

One CTA per column tile of 256 columns; its W warps split the tile's K rows (warp w reads rows
[w K/W, (w + 1) K/W)), every lane owns 8 contiguous columns of every row of its warp's steps
(one 16-byte load per kept row), and the warps' partial sums meet once, at the end, in shared
memory. So a call has no fp32 atomics, no fence, no ticket and no read-back from L2: y is
written by the CTA that computed it. The layouts are what ``triton.language`` could not be made
to produce (fma_wide.py's docstring): x, the thresholds and the keep mask of a step are a
[W, BLOCK_K] tensor in the slice of the weight tile's [W, BLOCK_K, 256] layout, so the mask
reaches the weight loads with no layout conversion.

Probe code (``benchmarks/warpk_probe.py``): M = 1, bf16 or fp16, segment ends multiples of
256, K a multiple of W * BLOCK_K. Gluon kernels do not run in the interpreter.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _stream_rows(x_ptr, w_ptr, thr_row, rows, cols3, acc, N, K, BLOCK_K: gl.constexpr,
                 STEPS: gl.constexpr, cmask3=None):  # fmt: skip
    """The K loop the Gluon probes share (``cluster_gluon.py``, ``balanced_gluon.py`` and
    ``narrow_gluon.py`` import it): rows [W, BLOCK_K] the warps' first rows, cols3 [1, 1, C]
    the tile's columns, acc [W, C] fp32, cmask3 [1, 1, C] the columns to load (None: all);
    returns acc plus, per warp, the sum over its STEPS steps of BLOCK_K rows of
    where(|x| > tau, x, 0) x the weight rows, dropped rows never loaded. A step's x and
    thresholds are requested and its mask computed before the previous step's weights are
    consumed."""
    xv = gl.load(x_ptr + rows).to(gl.float32)
    tv = gl.load(thr_row + rows)
    kept = gl.abs(xv) > tv
    xv = gl.where(kept, xv, 0.0)
    for _ in range(STEPS):
        load_mask = gl.expand_dims(kept, 2)
        if cmask3 is not None:
            load_mask = load_mask & cmask3
        w = gl.load(w_ptr + gl.expand_dims(rows, 2) * N + cols3, mask=load_mask, other=0.0,
                    eviction_policy="evict_first")  # fmt: skip
        rows += BLOCK_K
        nxt = rows < K
        xn = gl.load(x_ptr + rows, mask=nxt, other=0.0).to(gl.float32)
        tn = gl.load(thr_row + rows, mask=nxt, other=float("inf"))
        acc += gl.sum(gl.expand_dims(xv, 2) * w.to(gl.float32), axis=1)
        kept = gl.abs(xn) > tn
        xv = gl.where(kept, xn, 0.0)
    return acc


@gluon.jit
def _warpk_gemv_kernel(x_ptr, w_ptr, thr_ptr, y_ptr, N, K, E0, stride_thr,
                       W: gl.constexpr, BLOCK_K: gl.constexpr, STEPS: gl.constexpr):  # fmt: skip
    """y[n0:n0 + 256] for column tile program_id(0); thresholds row 0 for columns < E0, row 1
    after (two segments at most in this probe)."""
    L3: gl.constexpr = gl.BlockedLayout([1, BLOCK_K, 8], [1, 1, 32], [W, 1, 1], [2, 1, 0])
    LX: gl.constexpr = gl.SliceLayout(2, L3)  # [W, BLOCK_K]: a warp's rows of a step
    LACC: gl.constexpr = gl.SliceLayout(1, L3)  # [W, 256]: a warp's partial sums
    LN: gl.constexpr = gl.SliceLayout(0, LACC)  # [256]
    n0 = gl.program_id(0) * 256
    seg = (n0 >= E0).to(gl.int32)
    thr_row = thr_ptr + seg * stride_thr
    cols = n0 + gl.arange(0, 256, layout=LN)
    cols3 = gl.expand_dims(gl.expand_dims(cols, 0), 1)  # [1, 1, 256]
    warp = gl.arange(0, W, layout=gl.SliceLayout(1, LX))
    j = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LX))
    rows = gl.expand_dims(warp * (STEPS * BLOCK_K), 1) + gl.expand_dims(j, 0)  # [W, BLOCK_K]

    acc = _stream_rows(x_ptr, w_ptr, thr_row, rows, cols3, gl.zeros([W, 256], gl.float32, LACC),
                       N, K, BLOCK_K, STEPS)  # fmt: skip
    out = gl.sum(acc, axis=0)
    gl.store(y_ptr + cols, out.to(y_ptr.dtype.element_ty))


def warpk_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor,
               segment_ends, warps: int = 32, block_k: int = 8) -> torch.Tensor:  # fmt: skip
    """y [1, N] = where(|x| > thresholds[seg], x, 0) @ weight_t; see the module docstring."""
    k, n = weight_t.shape
    ends = tuple(segment_ends)
    if x.shape[0] != 1 or len(ends) > 2 or any(e % 256 for e in ends) or k % (warps * block_k):
        raise ValueError("warpk_gemv: M = 1, at most 2 segments of multiples of 256, "
                         f"K a multiple of {warps * block_k}")  # fmt: skip
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    thr = thresholds.contiguous()
    _warpk_gemv_kernel[(n // 256,)](
        x, weight_t, thr, y, n, k, ends[0], thr.stride(0) if thr.shape[0] > 1 else 0,
        W=warps, BLOCK_K=block_k, STEPS=k // (warps * block_k), num_warps=warps,
    )  # fmt: skip
    return y
