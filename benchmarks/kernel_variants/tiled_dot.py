"""Kernel variant (kernel_notes section 24): the package's tensor-core path (M = 5-16 rows)
over a column-tiled weight layout [N / BLOCK_N, K, BLOCK_N].

The package's ``_dot_tile`` addresses weight rows as ``w_ptr + k * N + offs_n``; handed the
tile's base and N = BLOCK_N it reads the tiled layout instead, so the loop here IS the
package's (``triton_sparse_gemv._dot_tile``: x padded to 16 rows, the union of the rows' keep
masks, masked weight rows, ``tl.dot``), and so is the atomic split-K epilogue. With
``tiled=False`` the same kernel reads ``weight_t`` [K, N] (the control).

Probe code (``benchmarks/warpk_probe.py --tiled-dot``): 16-bit weights, segment ends
multiples of BLOCK_N, no bias, masked steps (no COMPACT).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernel_variants.tiled_wide import tiled_copy
from was_compile.kernels.splitk import _atomic_splitk_epilogue, atomic_workspace
from was_compile.kernels.triton_sparse_gemv import _dot_tile

MAX_ENDS = 4


@triton.jit
def _tiled_dot_kernel(x_ptr, w_ptr, thr_ptr, ws_ptr, ticket_ptr, y_ptr, M, N, K, stride_xm,
                      stride_thr, E0, E1, E2, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      K_ITERS: tl.constexpr, TILED: tl.constexpr,
                      INTERPRET: tl.constexpr):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n0 = pid_n * BLOCK_N
    seg = (n0 >= E0).to(tl.int32) + (n0 >= E1).to(tl.int32) + (n0 >= E2).to(tl.int32)
    thr_row = thr_ptr + seg * stride_thr
    k_start = pid_k * (BLOCK_K * K_ITERS)
    cols = tl.arange(0, BLOCK_N)
    if TILED:  # this tile's rows are BLOCK_N apart
        base = w_ptr + pid_n.to(tl.int64) * K * BLOCK_N
        row = BLOCK_N
    else:
        base = w_ptr + n0
        row = N
    acc = _dot_tile(x_ptr, base, thr_row, x_ptr, 0, M, row, K, stride_xm, k_start, cols,
                    cols < BLOCK_N, BLOCK_N, BLOCK_K, K_ITERS, 0, INTERPRET)  # fmt: skip
    offs_n = n0 + cols
    _atomic_splitk_epilogue(acc, tl.arange(0, 16), offs_n, offs_n < N, M, N, ws_ptr, ticket_ptr,
                            y_ptr, y_ptr, y_ptr, 0, False, INTERPRET)  # fmt: skip


def tiled_dot_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor, ends,
                   block_n: int = 64, block_k: int = 64, k_iters: int = 1, warps: int = 2,
                   stages: int = 3, maxnreg: int | None = None,
                   tiled: bool = True) -> torch.Tensor:  # fmt: skip
    """y [M, N] = where(|x| > thresholds[seg], x, 0) @ weight_t for M <= 16 rows, read from
    the tiled copy of ``weight_t`` (made on the first call with this tensor) or, with
    ``tiled=False``, from ``weight_t`` itself."""
    m, k = x.shape
    n = weight_t.shape[1]
    ends = tuple(ends)
    if (m > 16 or weight_t.element_size() != 2 or len(ends) > MAX_ENDS
            or any(e % block_n for e in ends)):  # fmt: skip
        raise ValueError(f"tiled_dot_gemv: M <= 16, 16-bit weights, at most {MAX_ENDS} "
                         f"segments whose ends are multiples of {block_n}")  # fmt: skip
    w = tiled_copy(weight_t, block_n) if tiled else weight_t
    tiles = n // block_n
    workspace = atomic_workspace(x.device, m * n, tiles)
    if workspace is None:
        raise RuntimeError("tiled_dot_gemv: reserve the split-K workspace first "
                           "(triton_sparse_gemv.reserve_workspace_for)")  # fmt: skip
    ws, tickets = workspace
    e = list(ends[:-1]) + [n] * (MAX_ENDS - len(ends))
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    kw = {"maxnreg": maxnreg} if maxnreg else {}
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    grid = (tiles, triton.cdiv(k, block_k * k_iters))
    _tiled_dot_kernel[grid](x, w, thresholds, ws, tickets, y, m, n, k, x.stride(0),
                            thresholds.stride(0), e[0], e[1], e[2], BLOCK_N=block_n,
                            BLOCK_K=block_k, K_ITERS=k_iters, TILED=int(tiled),
                            INTERPRET=interpret, num_warps=warps, num_stages=stages,
                            **kw)  # fmt: skip
    return y
