"""Split-K reduction of the sparse GEMV: the second, small kernel of every call.

Every CTA of the GEMV writes its fp32 partial [M, BLOCK_N] to a workspace [splits, M, N] (no
fp16/bf16 atomics: precision, and bf16 atomics are missing on several targets and in the
interpreter); this kernel sums the splits in a fixed order (bitwise reproducible run to run),
adds the bias and casts to x's dtype. The split count depends on the autotuned config, which
the host does not know when it launches the reduction: the GEMV writes it to a one-int device
buffer that this kernel reads.

Fusing the reduction into the GEMV (the CTA that draws a column tile's last ticket from an
atomic counter sums that tile's partials) was built and measured on the H100 at Llama-3-8B
shapes, 50-99% sparsity: no faster inside a CUDA graph (o 99%: 9.9 vs 9.8 us; gate|up 50%:
58.8 vs 59.0 us; benchmarks/results/tile_probe4.json), and it needs a zeroed counter buffer per
stream; so the second launch stays.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_splitk_reduce_kernel"]


@triton.jit
def _round_out(acc, y_ptr, INTERPRET: tl.constexpr):
    """acc (fp32) in y's dtype, rounded to nearest even as the GPU does (the interpreter
    truncates fp32 -> bf16, so it is rounded by hand there)."""
    if INTERPRET and y_ptr.dtype.element_ty == tl.bfloat16:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = acc.to(y_ptr.dtype.element_ty)
    return out


@triton.jit
def _splitk_reduce_kernel(part_ptr, nsplit_ptr, bias_ptr, y_ptr, MN, N,
                          HAS_BIAS: tl.constexpr, MAX_SPLIT: tl.constexpr, BLOCK: tl.constexpr,
                          INTERPRET: tl.constexpr):  # fmt: skip
    """y[m, n] = cast(sum_s part[s, m, n] + bias[n]); fixed order, fp32."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    nsplit = tl.load(nsplit_ptr)
    s = tl.arange(0, MAX_SPLIT)
    vals = tl.load(
        part_ptr + s[:, None] * MN + offs[None, :],
        mask=(s[:, None] < nsplit) & mask[None, :],
        other=0.0,
    )
    acc = tl.sum(vals, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, _round_out(acc, y_ptr, INTERPRET), mask=mask)
