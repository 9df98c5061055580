"""Kernel variant (kernel_notes section 24): the package's M = 1 wide-tile GEMV over a
column-tiled weight layout.

The package reads ``weight_t`` [K, N]: a CTA's kept rows are 512-byte pieces (256 bf16
columns) N * 2 bytes apart (57 KB on Llama-3-8B gate+up), each in another DRAM page. Here the
weight is stored as [N / 256, K, 256] (``tile_weight``): a column tile's rows follow each other
512 bytes apart, so a CTA's K chunk (128 rows: 64 KB) is one contiguous block and the kept
rows of a step share DRAM pages. Everything else is the package's: the wide tile's loop
(``fma_wide.py``: a lane owns 8 columns of every row of the step, int32 column pairs, the
next step's x and mask computed before this step is consumed, evict-first weight loads) and
the atomic split-K epilogue (``splitk.py``), whose workspace the package reserves. With
``tiled=False`` the same kernel reads ``weight_t`` [K, N] (the control: this M = 1 code
against the package's kernel, which serves M = 1-4 and any segment ends).

Probe code (``benchmarks/warpk_probe.py --tiled``): M = 1, 16-bit weights, segment ends
multiples of 256, no bias. The tiled copy of a weight is made once per weight tensor and kept
(a benchmark's weight copies are made before timing).
"""

from __future__ import annotations

import os
import weakref

import torch
import triton
import triton.language as tl

from was_compile.kernels.fma_wide import _unpack_pair
from was_compile.kernels.gemv_rows import WEIGHT_EVICTION, keep_rows, load_rows, step_channels
from was_compile.kernels.splitk import _atomic_splitk_epilogue, atomic_workspace

TILE = 256  # columns per tile of the layout (one warp's 16-byte vectors across a row)
_TILE = tl.constexpr(TILE)  # the same, for the kernel
MAX_ENDS = 4


def tile_weight(weight_t: torch.Tensor, cols: int = TILE) -> torch.Tensor:
    """[K, N] -> [N / cols, K, cols] contiguous (the same values)."""
    k, n = weight_t.shape
    return weight_t.reshape(k, n // cols, cols).permute(1, 0, 2).contiguous()


_TILED: dict = {}  # (data_ptr, shape, cols) -> (weak reference to the weight, its tiled copy)


def tiled_copy(weight_t: torch.Tensor, cols: int = TILE) -> torch.Tensor:
    """``tile_weight(weight_t, cols)``, made on the first call with this tensor and kept (the
    probes' weight copies are made before timing)."""
    key = (weight_t.data_ptr(), weight_t.shape, cols)
    ref, w3 = _TILED.get(key, (None, None))
    if ref is None or ref() is not weight_t:  # new, or a freed tensor's memory reused
        w3 = tile_weight(weight_t, cols)
        _TILED[key] = (weakref.ref(weight_t), w3)
    return w3


@triton.jit
def _tiled_wide_kernel(x_ptr, w_ptr, thr_ptr, ws_ptr, ticket_ptr, y_ptr, N, K, stride_thr,
                       E0, E1, E2, BLOCK_K: tl.constexpr, K_ITERS: tl.constexpr,
                       TILED: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """Columns [pid_n * 256, +256) x rows [pid_k * CHUNK, +CHUNK): the partial sums, then the
    atomic split-K epilogue (the tile's last CTA writes y). TILED = 0: the same code over the
    package's [K, N] layout (the control)."""
    CHUNK: tl.constexpr = BLOCK_K * K_ITERS
    IS_BF16: tl.constexpr = w_ptr.dtype.element_ty == tl.bfloat16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n0 = pid_n * _TILE
    seg = (n0 >= E0).to(tl.int32) + (n0 >= E1).to(tl.int32) + (n0 >= E2).to(tl.int32)
    thr_row = thr_ptr + seg * stride_thr
    k_start = pid_k * CHUNK
    # the tile's rows as int32 column pairs: row k of tile pid_n at (pid_n * K + k) * 128
    # (TILED), or at k * N / 2 + pid_n * 128 ([K, N])
    if TILED:
        wq = w_ptr.to(tl.pointer_type(tl.int32)) + pid_n.to(tl.int64) * K * (_TILE // 2)
        row = _TILE // 2
    else:
        wq = w_ptr.to(tl.pointer_type(tl.int32)) + pid_n * (_TILE // 2)
        row = N // 2
    offs_q = tl.arange(0, _TILE // 2)
    j = tl.arange(0, BLOCK_K)
    offs_k, ok = step_channels(x_ptr, 0, K, k_start, j, CHUNK, 0)
    thr, r0, r1, r2, r3 = load_rows(x_ptr, thr_row, offs_k, ok, 1, 0, 1)
    kept, x0, x1, x2, x3 = keep_rows(thr, r0, r1, r2, r3, 1)
    acc = tl.zeros([_TILE // 2], dtype=tl.float32)  # even columns
    odd = tl.zeros([_TILE // 2], dtype=tl.float32)
    for _ in range(K_ITERS):
        w = tl.load(wq + offs_k[:, None] * row + offs_q[None, :], mask=kept[:, None],
                    other=0, eviction_policy=WEIGHT_EVICTION)  # fmt: skip
        j += BLOCK_K
        offs_k, ok = step_channels(x_ptr, 0, K, k_start, j, CHUNK, 0)
        thr, r0n, r1, r2, r3 = load_rows(x_ptr, thr_row, offs_k, ok, 1, 0, 1)
        kept, y0, x1, x2, x3 = keep_rows(thr, r0n, r1, r2, r3, 1)
        lo, hi = _unpack_pair(w, IS_BF16)
        acc += tl.sum(x0[:, None] * lo, axis=0)
        odd += tl.sum(x0[:, None] * hi, axis=0)
        x0 = y0
    part = tl.interleave(acc, odd)[None, :]  # [1, 256]
    offs_n = n0 + tl.arange(0, _TILE)
    _atomic_splitk_epilogue(part, tl.arange(0, 1), offs_n, offs_n < N, 1, N, ws_ptr, ticket_ptr,
                            y_ptr, y_ptr, y_ptr, 0, False, INTERPRET)  # fmt: skip


def tiled_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor, ends,
               block_k: int = 8, k_iters: int = 16, maxnreg: int | None = None,
               tiled: bool = True) -> torch.Tensor:  # fmt: skip
    """y [1, N] = where(|x| > thresholds[seg], x, 0) @ weight_t, read from the tiled copy of
    ``weight_t`` (made on the first call with this tensor); see the module docstring.
    ``tiled=False``: the same kernel over ``weight_t`` itself (the control)."""
    k, n = weight_t.shape
    ends = tuple(ends)
    if (x.shape[0] != 1 or weight_t.element_size() != 2 or len(ends) > MAX_ENDS
            or any(e % TILE for e in ends)):  # fmt: skip
        raise ValueError(f"tiled_gemv: M = 1, 16-bit weights, at most {MAX_ENDS} segments "
                         f"whose ends are multiples of {TILE}")  # fmt: skip
    w3 = tiled_copy(weight_t) if tiled else weight_t
    tiles = n // TILE
    workspace = atomic_workspace(x.device, n, tiles)
    if workspace is None:
        raise RuntimeError("tiled_gemv: reserve the split-K workspace first "
                           "(triton_sparse_gemv.reserve_workspace_for)")  # fmt: skip
    ws, tickets = workspace
    e = list(ends[:-1]) + [n] * (MAX_ENDS - len(ends))
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    kw = {"maxnreg": maxnreg} if maxnreg else {}
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    grid = (tiles, triton.cdiv(k, block_k * k_iters))
    _tiled_wide_kernel[grid](x, w3, thresholds, ws, tickets, y, n, k, thresholds.stride(0),
                             e[0], e[1], e[2], BLOCK_K=block_k, K_ITERS=k_iters,
                             TILED=int(tiled), INTERPRET=interpret, num_warps=1,
                             num_stages=1, **kw)  # fmt: skip
    return y
