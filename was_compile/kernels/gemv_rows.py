"""Per-step row work shared by the sparse GEMV's FMA paths (default and wide tiles).

One step of the K loop handles BLOCK_K input channels: which channels (contiguous, or the next
entries of a CTA's kept-channel list), their thresholds and x of up to 4 rows, and the keep
masks (|x| > tau compared in fp32; x of dropped entries zeroed; the union over rows decides
which weight rows are read). Split into load and keep so a loop can request the next step's
rows before it consumes the current weight tile.
"""

import triton
import triton.language as tl

__all__ = ["step_channels", "load_rows", "keep_rows", "WEIGHT_EVICTION"]

# Cache hint on every weight load of the GEMV: each weight byte is read once a call, so it
# goes first when L2 needs room, and x, the thresholds, the split-K workspace and the rest of
# a decode step's small tensors stay. Llama-3-8B decode on the H100, same session, 50% / 60%:
# 4.27 / 3.89 ms per token without, 4.16 / 3.80 with (benchmarks/kernel_notes.md section 12).
WEIGHT_EVICTION = tl.constexpr("evict_first")


@triton.jit
def step_channels(list_ptr, count, K, k_start, j, CHUNK: tl.constexpr, COMPACT: tl.constexpr):
    """Channels of the step whose entries are j (contiguous, or the next BLOCK_K
    entries of the kept list: a load) and whether they exist (past the chunk: no)."""
    if COMPACT:
        ok = j < count
        offs_k = tl.load(list_ptr + j, mask=ok, other=0)
    else:
        offs_k = k_start + j
        ok = (j < CHUNK) & (offs_k < K)
    return offs_k, ok


@triton.jit
def load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M: tl.constexpr):
    """Thresholds and x of up to 4 rows at channels offs_k, as loaded (rows >= M and
    missing channels: x = 0, threshold = inf). Nothing is converted here."""
    zk = tl.zeros_like(offs_k)  # a tensor compare (the interpreter rejects scalar masks)
    thr = tl.load(thr_ptr + offs_k, mask=ok, other=float("inf"))
    r0 = tl.load(x_ptr + offs_k, mask=ok, other=0.0)
    r1 = r0
    r2 = r0
    r3 = r0
    if BLOCK_M >= 2:
        r1 = tl.load(x_ptr + stride_xm + offs_k, mask=ok & (zk < M - 1), other=0.0)
    if BLOCK_M >= 4:
        r2 = tl.load(x_ptr + 2 * stride_xm + offs_k, mask=ok & (zk < M - 2), other=0.0)
        r3 = tl.load(x_ptr + 3 * stride_xm + offs_k, mask=ok & (zk < M - 3), other=0.0)
    return thr, r0, r1, r2, r3


@triton.jit
def keep_rows(thr, r0, r1, r2, r3, BLOCK_M: tl.constexpr):
    """keep[m, k] = |x[m, k]| > tau[k] in fp32, x of dropped entries zeroed, and
    the union over the rows (which weight rows are read)."""
    x0 = r0.to(tl.float32)
    k0 = tl.abs(x0) > thr
    x0 = tl.where(k0, x0, 0.0)
    kept = k0
    x1 = x0
    x2 = x0
    x3 = x0
    if BLOCK_M >= 2:
        x1 = r1.to(tl.float32)
        k1 = tl.abs(x1) > thr
        x1 = tl.where(k1, x1, 0.0)
        kept = kept | k1
    if BLOCK_M >= 4:
        x2 = r2.to(tl.float32)
        x3 = r3.to(tl.float32)
        k2 = tl.abs(x2) > thr
        k3 = tl.abs(x3) > thr
        x2 = tl.where(k2, x2, 0.0)
        x3 = tl.where(k3, x3, 0.0)
        kept = kept | k2 | k3
    return kept, x0, x1, x2, x3
