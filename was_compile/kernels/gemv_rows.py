"""Per-step row work shared by the sparse GEMV's FMA paths (default and wide tiles).

One step of the K loop handles BLOCK_K input channels: which channels (contiguous, or the next
entries of a CTA's kept-channel list), their thresholds and x of up to 4 rows, and the keep
masks (|x| > tau compared in fp32; x of dropped entries zeroed; the union over rows decides
which weight rows are read). Split into load and keep so a loop can request the next step's
rows before it consumes the current weight tile.
"""

import triton
import triton.language as tl

from .splitk import _round_out

__all__ = ["step_channels", "load_x", "load_rows", "keep_rows", "WEIGHT_EVICTION"]

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
def load_x(ptrs, mask, up_off, ACT: tl.constexpr, GATED: tl.constexpr,
           INTERPRET: tl.constexpr):  # fmt: skip
    """x at ``ptrs`` in its own dtype (masked-off entries 0). With an input prologue
    (``input_prologue.py``; ACT = its activation code, 0 = none) ``ptrs`` point at the gate
    operand in src and x = act(gate) [* src at ptrs + up_off], in fp32, rounded once to src's
    dtype; every activation maps 0 to 0, so masked entries stay 0."""
    v = tl.load(ptrs, mask=mask, other=0.0)
    if ACT != 0:
        g = v.to(tl.float32)
        if ACT == 1:  # silu
            h = g * tl.sigmoid(g)
        elif ACT == 2:  # gelu, tanh form: 0.5 (1 + tanh(z)) = sigmoid(2 z)
            h = g * tl.sigmoid(1.5957691216057308 * (g + 0.044715 * g * g * g))
        elif ACT == 3:  # gelu, erf form
            h = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
        else:  # relu
            h = tl.maximum(g, 0.0)
        if GATED:
            h = h * tl.load(ptrs + up_off, mask=mask, other=0.0).to(tl.float32)
        v = _round_out(h, ptrs, INTERPRET)
    return v


@triton.jit
def load_rows(x_ptr, thr_ptr, offs_k, ok, M, stride_xm, BLOCK_M: tl.constexpr, up_off=0,
              ACT: tl.constexpr = 0, GATED: tl.constexpr = 0,
              INTERPRET: tl.constexpr = 0):  # fmt: skip
    """Thresholds and x of up to 4 rows at channels offs_k, in x's dtype (rows >= M and
    missing channels: x = 0, threshold = inf); ACT, GATED, up_off: the input prologue
    (``load_x``). Nothing is converted to fp32 here."""
    zk = tl.zeros_like(offs_k)  # a tensor compare (the interpreter rejects scalar masks)
    thr = tl.load(thr_ptr + offs_k, mask=ok, other=float("inf"))
    r0 = load_x(x_ptr + offs_k, ok, up_off, ACT, GATED, INTERPRET)
    r1 = r0
    r2 = r0
    r3 = r0
    if BLOCK_M >= 2:
        r1 = load_x(x_ptr + stride_xm + offs_k, ok & (zk < M - 1), up_off, ACT, GATED,
                    INTERPRET)  # fmt: skip
    if BLOCK_M >= 4:
        r2 = load_x(x_ptr + 2 * stride_xm + offs_k, ok & (zk < M - 2), up_off, ACT, GATED,
                    INTERPRET)  # fmt: skip
        r3 = load_x(x_ptr + 3 * stride_xm + offs_k, ok & (zk < M - 3), up_off, ACT, GATED,
                    INTERPRET)  # fmt: skip
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
