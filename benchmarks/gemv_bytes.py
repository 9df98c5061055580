"""What a thresholded GEMV must compute and read, for the kernel benchmarks (``kernels.py``,
``tile_probe.py``): the fp32 reference with the same per-segment masks as the kernel, and the
weight bytes of the rows that at least one of the M rows keeps (the union, per segment).

Imported by scripts run as ``python benchmarks/X.py`` (Python puts ``benchmarks/`` first on
``sys.path``); torch comes in with the caller's tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def masked_reference(
    x: torch.Tensor, thresholds: torch.Tensor, weight_t: torch.Tensor, ends: Sequence[int]
) -> tuple[torch.Tensor, int, float]:
    """(ref [M, N] fp32, kept weight bytes, union-kept fraction of the N x K weight).

    x [M, K]; thresholds [S, K]; weight_t [K, N] in any dtype (its element size counts the
    bytes; it is upcast to fp32 one segment at a time); ends: segment ends, last == N.
    ref[m, n] = sum_k where(|x[m, k]| > thresholds[seg(n), k], x[m, k], 0) * weight_t[k, n].
    """
    import torch

    m, k = x.shape
    n = ends[-1]
    elem = weight_t.element_size()
    ref = torch.empty(m, n, device=x.device, dtype=torch.float32)
    kept_bytes, kept_weighted, start = 0, 0.0, 0
    xf = x.float()
    for s, end in enumerate(ends):
        keep = xf.abs() > thresholds[s]
        ref[:, start:end] = torch.where(keep, xf, 0.0) @ weight_t[:, start:end].float()
        union = int(keep.any(dim=0).sum())
        kept_bytes += union * (end - start) * elem
        kept_weighted += union / k * (end - start)
        start = end
    return ref, kept_bytes, kept_weighted / n
