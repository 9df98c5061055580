"""PyTorch reference of the fused threshold + sparse matmul.

This is the semantics every kernel must reproduce, and the path the op runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def segment_starts(segment_ends: Sequence[int]) -> list[int]:
    return [0, *segment_ends[:-1]]


def sparse_linear_reference(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    thresholds: torch.Tensor,
    segment_ends: Sequence[int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked linear over concatenated sibling weights.

    x [..., K]; weight_t [K, N] (the transposed, concatenated weights of the group);
    thresholds [S, K], one vector per output segment; segment_ends the S increasing column
    ends, the last equal to N; bias [N] or None. Segment s computes
    ``where(|x| > thresholds[s], x, 0) @ weight_t[:, start_s:end_s]``; the mask compares
    |x| in float32 with the float32 thresholds and the product uses the unscaled input.
    Returns [..., N] in x.dtype.
    """
    outs = []
    magnitude = x.abs().float()  # thresholds are fp32: compare in fp32, as the kernels do
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for s, (a, b) in enumerate(zip(segment_starts(segment_ends), segment_ends)):
        xm = torch.where(magnitude > thresholds[s].float(), x, zero)
        outs.append(xm @ weight_t[:, a:b])
    y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


def dense_linear(
    x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The same linear with no mask: what prefill runs when ``prefill="dense"``."""
    x2 = x.reshape(-1, x.shape[-1])
    y = torch.addmm(bias.to(x.dtype), x2, weight_t) if bias is not None else x2 @ weight_t
    return y.reshape(*x.shape[:-1], weight_t.shape[1])
