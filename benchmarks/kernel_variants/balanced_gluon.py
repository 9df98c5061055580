"""Kernel variant (kernel_notes section 22): the M = 1 sparse GEMV with no reduction across
CTAs and no idle SMs, written in Gluon.

``warpk_gluon.py`` gave each 256-column tile one CTA whose warps split K: no atomics, but
Llama-3-8B's gate+up has 112 such tiles for 132 SMs. Here the grid has P CTAs (P = the SM
count, or a multiple), and each segment's columns are cut into ranges of whole 16-byte
vectors (8 columns of a 16-bit weight), as even as they come: a segment of width E gets a
share of the P CTAs proportional to E, and its ranges differ by at most one vector (gate+up,
P = 132: 66 ranges of 216 or 224 columns a segment). A CTA's W warps split K (warp w reads
rows [w K / W, (w + 1) K / W) in steps of BLOCK_K), lanes past the range's end load nothing,
and the warps' sums meet once in shared memory. y is written by the CTA that computed it:
no workspace, no fp32 atomics, no fence, no ticket, the same sum run to run.

Probe code (``benchmarks/warpk_probe.py --balanced``): M = 1, 16-bit weights, segment ends
multiples of 8, K a multiple of W x BLOCK_K. Gluon kernels do not run in the interpreter.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kernel_variants.warpk_gluon import _stream_rows  # the K loop, shared

_RANGES: dict = {}  # (ends, ctas, device) -> (widest range, int32 [P, 4] rows c0, c1, seg, 0)


def column_ranges(ends: tuple, ctas: int, vec: int = 8) -> list[tuple[int, int, int]]:
    """[(c0, c1, segment)] for ``ctas`` CTAs: each segment's vectors of ``vec`` columns split
    as evenly as possible over a share of the CTAs proportional to its width (each segment
    gets at least one)."""
    n = ends[-1]
    starts = (0,) + tuple(ends[:-1])
    shares = [max(1, round(ctas * (e - s) / n)) for s, e in zip(starts, ends)]
    shares[-1] = max(1, ctas - sum(shares[:-1]))
    out = []
    for seg, (s, e, p) in enumerate(zip(starts, ends, shares)):
        vecs = (e - s) // vec
        for i in range(p):
            out.append((s + vec * (vecs * i // p), s + vec * (vecs * (i + 1) // p), seg))
    return out


@gluon.jit
def _balanced_gemv_kernel(x_ptr, w_ptr, thr_ptr, y_ptr, ranges_ptr, N, K, stride_thr,
                          W: gl.constexpr, BLOCK_K: gl.constexpr, STEPS: gl.constexpr,
                          VEC: gl.constexpr, INTERLEAVE: gl.constexpr):  # fmt: skip
    """y[c0:c1] for the CTA's range (row program_id(0) of the [P, 4] table). INTERLEAVE: warp
    w takes steps w, w + W, ... (the SM's warps read neighbouring rows at a time) instead of a
    contiguous K range."""
    TILE: gl.constexpr = 32 * VEC
    L3: gl.constexpr = gl.BlockedLayout([1, BLOCK_K, VEC], [1, 1, 32], [W, 1, 1], [2, 1, 0])
    LX: gl.constexpr = gl.SliceLayout(2, L3)  # [W, BLOCK_K]: a warp's rows of a step
    LACC: gl.constexpr = gl.SliceLayout(1, L3)  # [W, TILE]: a warp's partial sums
    LN: gl.constexpr = gl.SliceLayout(0, LACC)  # [TILE]
    entry = ranges_ptr + gl.program_id(0) * 4
    # range ends are whole vectors: the hint lets the column mask keep 16-byte loads
    c0 = gl.multiple_of(gl.load(entry), 8)
    c1 = gl.multiple_of(gl.load(entry + 1), 8)
    seg = gl.load(entry + 2)
    thr_row = thr_ptr + seg * stride_thr
    cols = c0 + gl.arange(0, TILE, layout=LN)
    cmask = cols < c1
    cols3 = gl.expand_dims(gl.expand_dims(cols, 0), 1)  # [1, 1, TILE]
    cmask3 = gl.expand_dims(gl.expand_dims(cmask, 0), 1)
    warp = gl.arange(0, W, layout=gl.SliceLayout(1, LX))
    j = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LX))
    acc = gl.zeros([W, TILE], gl.float32, LACC)
    if INTERLEAVE:
        rows = gl.expand_dims(warp * BLOCK_K, 1) + gl.expand_dims(j, 0)
        acc = _stream_rows(x_ptr, w_ptr, thr_row, rows, cols3, acc, N, K, W * BLOCK_K, STEPS,
                           cmask3)  # fmt: skip
    else:
        rows = gl.expand_dims(warp * (STEPS * BLOCK_K), 1) + gl.expand_dims(j, 0)
        acc = _stream_rows(x_ptr, w_ptr, thr_row, rows, cols3, acc, N, K, BLOCK_K, STEPS,
                           cmask3)  # fmt: skip
    out = gl.sum(acc, axis=0)
    gl.store(y_ptr + cols, out.to(y_ptr.dtype.element_ty), mask=cmask)


def balanced_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor,
                  segment_ends, ctas: int = 132, warps: int = 32, block_k: int = 8,
                  cols: int = 256, interleave: bool = False,
                  maxnreg: int | None = None) -> torch.Tensor:  # fmt: skip
    """y [1, N] = where(|x| > thresholds[seg], x, 0) @ weight_t; ``ctas`` CTAs over balanced
    column ranges of at most ``cols`` (256: 8 columns a lane, 16-byte loads; 128: 4, 8-byte);
    see the module docstring."""
    k, n = weight_t.shape
    ends = tuple(segment_ends)
    vec = cols // 32
    if (x.shape[0] != 1 or weight_t.element_size() != 2 or cols not in (128, 256)
            or any(e % 8 for e in ends) or k % (warps * block_k)):  # fmt: skip
        raise ValueError("balanced_gemv: M = 1, 16-bit weights, segment ends multiples of 8, "
                         f"K a multiple of {warps * block_k}")  # fmt: skip
    key = (ends, ctas, x.device)
    if key not in _RANGES:
        ranges = column_ranges(ends, ctas)
        _RANGES[key] = (max(c1 - c0 for c0, c1, _ in ranges),
                        torch.tensor([[a, b, s, 0] for a, b, s in ranges], dtype=torch.int32,
                                     device=x.device))  # fmt: skip
    widest, table = _RANGES[key]
    if widest > cols:
        raise ValueError(f"balanced_gemv: {ctas} CTAs give ranges of {widest} columns, wider "
                         f"than cols={cols}: use more CTAs or cols=256")  # fmt: skip
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    thr = thresholds.contiguous()
    _balanced_gemv_kernel[(table.shape[0],)](
        x, weight_t, thr, y, table, n, k, thr.stride(0) if thr.shape[0] > 1 else 0,
        W=warps, BLOCK_K=block_k, STEPS=k // (warps * block_k), VEC=vec,
        INTERLEAVE=int(interleave), num_warps=warps,
        **({"maxnreg": maxnreg} if maxnreg else {}),
    )  # fmt: skip
    return y
