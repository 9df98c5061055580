"""Kernel variant (kernel_notes section 23): M = 1 sparse GEMV with no split-K at all.

Every CTA (one warp) owns a narrow column tile (BLOCK_N = 16-128 columns) and streams the
WHOLE of K for it, so

* no reduction across CTAs: no workspace, no atomics, no fence, no ticket; each CTA stores its
  own columns of y (section 20: the package's split-K epilogue costs 1.2-2.5 us a call);
* every CTA reads the same kept rows (the mask is over channels, and every CTA sees all of
  them), so every CTA has the same work;
* far fewer CTAs (gate+up at 64 columns: 448 instead of 3584), so a shorter launch.

The price: few CTAs per SM, so each must keep many bytes in flight: BLOCK_K rows a step
(the tile [BLOCK_K, BLOCK_N], lanes 8 columns wide, BLOCK_N / 8 lanes across a row and the
rest of the warp down the rows; the step's rows are summed in-thread, then across those lanes
by shuffles). Masked steps read only the kept rows of their BLOCK_K channels, so the bytes in
flight shrink with the sparsity; COMPACT = 1 first lists the kept channels (each CTA its own
list in a global scratch buffer: the channels and their x) and every step then reads BLOCK_K
kept rows. PIPE = 2 (masked) requests a step's weights one step early: two steps in flight.

Same semantics as the package's kernel at M = 1: keep[k] = |x[k]| > tau[seg, k] in fp32, x of
a dropped channel zeroed, its weight row never loaded, fp32 accumulation, output in x's dtype.
Segment ends must be multiples of BLOCK_N (a tile belongs to one segment). No bias.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from was_compile.kernels.splitk import _round_out

MAX_ENDS = 4


@triton.jit
def _step(x_ptr, thr_ptr, offs_k, K: tl.constexpr):
    """Masked steps: x (fp32, dropped ones zeroed) and the keep mask of channels offs_k."""
    ok = offs_k < K
    xk = tl.load(x_ptr + offs_k, mask=ok, other=0.0).to(tl.float32)
    t = tl.load(thr_ptr + offs_k, mask=ok, other=float("inf"))
    kept = tl.abs(xk) > t
    return kept, tl.where(kept, xk, 0.0)


@triton.jit
def _list_kept(x_ptr, thr_ptr, idx_ptr, val_ptr, K: tl.constexpr, LB: tl.constexpr):
    """COMPACT: write the kept channels (increasing) and their x (fp32) to this CTA's
    idx_ptr[0:count] / val_ptr[0:count]; return count. LB channels at a time."""
    count = 0
    for b in range(0, K, LB):
        offs = b + tl.arange(0, LB)
        ok = offs < K
        xk = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        t = tl.load(thr_ptr + offs, mask=ok, other=float("inf"))
        kept = (tl.abs(xk) > t).to(tl.int32)
        pos = count + tl.cumsum(kept, axis=0) - 1
        tl.store(idx_ptr + pos, offs, mask=kept > 0)
        tl.store(val_ptr + pos, xk, mask=kept > 0)
        count += tl.sum(kept, axis=0)
    tl.debug_barrier()  # the lists are read back by other threads of this CTA
    return count


@triton.jit
def _fullk_kernel(x_ptr, w_ptr, thr_ptr, y_ptr, idx_ptr, val_ptr, stride_thr, E0, E1, E2,
                  N: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, COMPACT: tl.constexpr, PIPE: tl.constexpr,
                  LB: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    n0 = pid * BLOCK_N
    seg = (n0 >= E0).to(tl.int32) + (n0 >= E1).to(tl.int32) + (n0 >= E2).to(tl.int32)
    thr_row = thr_ptr + seg * stride_thr
    offs_n = tl.multiple_of(n0, 16) + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_cols = w_ptr + offs_n[None, :]
    j = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    if COMPACT:
        idx_ptr += pid * K
        val_ptr += pid * K
        count = _list_kept(x_ptr, thr_row, idx_ptr, val_ptr, K, LB)
        ok = j < count
        rows = tl.load(idx_ptr + j, mask=ok, other=0)
        xk = tl.load(val_ptr + j, mask=ok, other=0.0)
        for i in range(tl.cdiv(count, BLOCK_K)):
            w = tl.load(w_cols + rows[:, None] * N, mask=ok[:, None] & n_mask[None, :],
                        other=0.0, eviction_policy="evict_first")  # fmt: skip
            nxt = (i + 1) * BLOCK_K + j
            ok = nxt < count
            rows = tl.load(idx_ptr + nxt, mask=ok, other=0)
            x_n = tl.load(val_ptr + nxt, mask=ok, other=0.0)
            acc += tl.sum(xk[:, None] * w.to(tl.float32), axis=0)
            xk = x_n
    elif PIPE == 2:  # masked, two steps of weights in flight (as section 17's WIDE = 2)
        kept, xk = _step(x_ptr, thr_row, j, K)
        w = tl.load(w_cols + j[:, None] * N, mask=kept[:, None] & n_mask[None, :], other=0.0,
                    eviction_policy="evict_first")  # fmt: skip
        kept1, x1 = _step(x_ptr, thr_row, j + BLOCK_K, K)
        for i in range((K + BLOCK_K - 1) // BLOCK_K):
            offs1 = (i + 1) * BLOCK_K + j
            w1 = tl.load(w_cols + offs1[:, None] * N, mask=kept1[:, None] & n_mask[None, :],
                         other=0.0, eviction_policy="evict_first")  # fmt: skip
            kept2, x2 = _step(x_ptr, thr_row, offs1 + BLOCK_K, K)
            acc += tl.sum(xk[:, None] * w.to(tl.float32), axis=0)
            w = w1
            xk = x1
            kept1 = kept2
            x1 = x2
    else:  # masked, one step of weights in flight
        kept, xk = _step(x_ptr, thr_row, j, K)
        for i in range((K + BLOCK_K - 1) // BLOCK_K):
            offs_k = i * BLOCK_K + j
            w = tl.load(w_cols + offs_k[:, None] * N, mask=kept[:, None] & n_mask[None, :],
                        other=0.0, eviction_policy="evict_first")  # fmt: skip
            kept, x_n = _step(x_ptr, thr_row, offs_k + BLOCK_K, K)
            acc += tl.sum(xk[:, None] * w.to(tl.float32), axis=0)
            xk = x_n
    tl.store(y_ptr + offs_n, _round_out(acc, y_ptr, INTERPRET), mask=n_mask)


def fullk_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor, ends,
               block_n: int = 64, block_k: int = 64, warps: int = 1, compact: int = 0,
               pipe: int = 1, list_block: int = 512,
               maxnreg: int | None = None) -> torch.Tensor:  # fmt: skip
    """y [1, N] = (x * keep) @ weight_t for x [1, K], weight_t [K, N], thresholds [S, K] fp32,
    segment ends ``ends`` (S Python ints, the last = N, each a multiple of ``block_n``).
    ``compact``: read the kept rows from a per-CTA list (int32 channel, fp32 x) built first;
    else ``pipe`` = 2: request step i + 1's weight rows before step i's are consumed."""
    k, n = weight_t.shape
    if x.shape[0] != 1:
        raise ValueError("fullk_gemv takes M = 1")
    if len(ends) > MAX_ENDS or any(e % block_n for e in ends):
        raise ValueError(f"segment ends {ends} must be <= {MAX_ENDS} multiples of {block_n}")
    e = list(ends[:-1]) + [n] * (MAX_ENDS - len(ends))
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    tiles = n // block_n
    if compact:
        idx = _scratch(x.device, tiles * k, torch.int32)
        val = _scratch(x.device, tiles * k, torch.float32)
    else:
        idx = val = y
    kw = {"num_warps": warps, "num_stages": 1}
    if maxnreg:
        kw["maxnreg"] = maxnreg
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    _fullk_kernel[(tiles,)](x, weight_t, thresholds, y, idx, val, thresholds.stride(0),
                            e[0], e[1], e[2], N=n, K=k, BLOCK_N=block_n, BLOCK_K=block_k,
                            COMPACT=compact, PIPE=pipe, LB=list_block, INTERPRET=interpret,
                            **kw)  # fmt: skip
    return y


_SCRATCH: dict = {}


def _scratch(device, numel: int, dtype) -> torch.Tensor:
    """A buffer kept across calls (allocated outside CUDA-graph capture on first use)."""
    key = (str(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf
