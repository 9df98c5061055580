"""L2 prefetch of the next site's weight, issued by a sparse GEMV once its own work is done.

Why: a decode step runs four GEMVs per block with other kernels between them (norms, rotary,
attention, the residual adds), during which HBM is nearly idle, and each GEMV also pays a
fixed ramp and tail of a few microseconds in which it reads little (kernel_notes sections 2
and 13: on Llama-3-8B's gate+up, time = 9 us + kept bytes / 3.4 TB/s). If the CTAs of one
GEMV, after their epilogue, ask L2 for the first bytes of the *next* GEMV's weight, those
bytes move during that tail, the launch gap and the kernels between, and the next GEMV finds
them in L2 instead of HBM.

The next site's keep mask is not known yet (its input has not been computed), so whole rows
are fetched: at sparsity s a fraction s of the prefetched bytes is never used. They move while
HBM has little else to do, and they are bounded by the byte count the caller gives (the
backend's ``prefetch_mb`` option; L2 is 50 MB on an H100).

The prefetch is a hint (``prefetch.global.L2``: no register written, nothing waited for), so it
cannot change any result; it is compiled out under ``TRITON_INTERPRET=1``, which has no inline
assembly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["prefetch_share", "LINE_BYTES", "check_prefetch"]

# one prefetch instruction brings one 128-byte L2 line
LINE_BYTES = 128


@triton.jit
def prefetch_share(base_ptr, n_bytes, LANES: tl.constexpr):
    """This CTA's share of the bytes [base_ptr, base_ptr + n_bytes): contiguous lines, CTAs in
    launch order (the CTAs that finish first tend to be the first launched, and the next GEMV's
    first K chunks are the first bytes of its weight_t)."""
    ctas = tl.num_programs(0) * tl.num_programs(1)
    cta = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    lines = tl.cdiv(n_bytes, 128)
    per = tl.cdiv(lines, ctas)
    first = cta * per
    last = tl.minimum(first + per, lines)
    base = base_ptr.to(tl.pointer_type(tl.int8))
    for i in range(first, last, LANES):
        # lanes past the share repeat its last line (a repeated prefetch costs nothing)
        line = tl.minimum(i + tl.arange(0, LANES), last - 1)
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;",
            "=r,l",
            [base + line.to(tl.int64) * 128],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )


def check_prefetch(prefetch: torch.Tensor | None, prefetch_bytes: int,
                   device: torch.device) -> int:  # fmt: skip
    """The number of bytes to prefetch (0: none); a clear error for a bad pair."""
    if prefetch is None:
        if prefetch_bytes:
            raise ValueError("prefetch_bytes > 0 needs a prefetch tensor")
        return 0
    if not isinstance(prefetch, torch.Tensor):
        raise ValueError(f"prefetch must be a tensor, got {type(prefetch).__name__}")
    if prefetch.device != device:
        raise ValueError(f"prefetch is on {prefetch.device}, the call's tensors on {device}")
    if not prefetch.is_contiguous():
        raise ValueError("prefetch must be contiguous (its first bytes are fetched)")
    size = prefetch.numel() * prefetch.element_size()
    if not 0 <= prefetch_bytes <= min(size, 2**31 - 1):
        raise ValueError(f"prefetch_bytes = {prefetch_bytes} outside 0..{size} (the tensor's size)")
    return int(prefetch_bytes)
