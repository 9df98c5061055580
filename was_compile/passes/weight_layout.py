"""Store each site group's weights once, transposed and concatenated: weight_t [K, N1+N2+...].

The sparse kernel skips a dropped input channel by not reading one contiguous row of
weight_t. Instead of keeping a second copy, the model's own parameters are re-pointed at
views of the new storage (``W_i = weight_t[:, a_i:b_i].t()``), so eager code keeps working
(``F.linear`` accepts the transposed view) and the memory is the eager model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupWeights:
    """The group's weight_t [K, N], bias [N] or None, and each member's column range."""

    weight_t: torch.Tensor
    bias: torch.Tensor | None
    columns: list[tuple[int, int]]


def _as_in_out(weight: torch.Tensor, layout: str) -> torch.Tensor:
    return weight.t() if layout == "out_in" else weight


def _laid_out(weights: list[torch.Tensor], layouts: list[str]) -> torch.Tensor | None:
    """weight_t if the members already are consecutive column blocks of one [K, N] tensor."""
    views = [_as_in_out(w, lay) for w, lay in zip(weights, layouts)]
    k = views[0].shape[0]
    n_total = sum(v.shape[1] for v in views)
    storage = views[0].untyped_storage().data_ptr()
    offset = views[0].storage_offset()
    col = 0
    for v in views:
        if (
            v.untyped_storage().data_ptr() != storage
            or v.shape[0] != k
            or (v.stride() != (n_total, 1) and not (v.shape[1] == 1 and v.stride()[0] == n_total))
            or v.storage_offset() != offset + col
        ):
            return None
        col += v.shape[1]
    return views[0].as_strided((k, n_total), (n_total, 1), offset)


def is_laid_out(weights: list[torch.Tensor], layouts: list[str]) -> bool:
    """Whether the members already are consecutive column blocks of one weight_t."""
    return _laid_out(weights, layouts) is not None


def lay_out_group(
    weights: list[torch.Tensor], layouts: list[str], biases: list[torch.Tensor | None]
) -> tuple[GroupWeights, bool]:
    """Return the group's weights in kernel layout and whether parameters were re-pointed.

    weights: the members' parameters, [N_i, K] ("out_in") or [K, N_i] ("in_out").
    Parameters not yet laid out are copied once into a new [K, sum N_i] tensor and replaced
    by views of it (peak extra memory: one group). Already laid-out groups cost nothing.
    """
    widths = [_as_in_out(w, lay).shape[1] for w, lay in zip(weights, layouts)]
    columns, col = [], 0
    for n in widths:
        columns.append((col, col + n))
        col += n
    bias = None
    if any(b is not None for b in biases):
        ref = next(b for b in biases if b is not None)
        parts = [b if b is not None else ref.new_zeros(n) for b, n in zip(biases, widths)]
        bias = parts[0].detach() if len(parts) == 1 else torch.cat([p.detach() for p in parts])
    existing = _laid_out(weights, layouts)
    if existing is not None:
        return GroupWeights(existing.detach(), bias, columns), False
    first = weights[0]
    with torch.inference_mode(False), torch.no_grad():
        weight_t = torch.empty((first.shape[1] if layouts[0] == "out_in" else first.shape[0], col),
                               dtype=first.dtype, device=first.device)  # fmt: skip
        for w, lay, (a, b) in zip(weights, layouts, columns):
            weight_t[:, a:b].copy_(_as_in_out(w, lay))
            block = weight_t[:, a:b]
            w.data = block.t() if lay == "out_in" else block
    return GroupWeights(weight_t, bias, columns), True
