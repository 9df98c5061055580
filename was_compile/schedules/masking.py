"""Eager sparsification with forward pre-hooks: the independent reference of the backend,
and the way calibration-time searches evaluate a candidate schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

# positions every masked_inputs block leaves dense when not told (see dense_prompt)
_DENSE_PREFIX: ContextVar[int] = ContextVar("was_dense_prefix", default=0)


@contextmanager
def dense_prompt(positions: int) -> Iterator[None]:
    """Inside the block, every ``masked_inputs`` that is not given ``dense_prefix`` leaves the
    first ``positions`` of each sequence dense: a whole search (greedy, sensitivities, TPE,
    refinement, evaluation) then measures decoding after a prompt of that length prefilled
    dense, the backend's default (``prefill="dense"``), without a parameter in each of them."""
    if positions < 0:
        raise ValueError(f"dense_prompt takes a number of positions >= 0, got {positions}")
    token = _DENSE_PREFIX.set(positions)
    try:
        yield
    finally:
        _DENSE_PREFIX.reset(token)


@contextmanager
def masked_inputs(
    model: nn.Module,
    thresholds: dict[str, torch.Tensor],
    counts: dict[str, list[int]] | None = None,
    dense_prefix: int | None = None,
) -> Iterator[None]:
    """Inside the block, each named module's input keeps only channels with |x_j| > tau_j.

    thresholds: module path -> tau [in_features]. If ``counts`` is given, counts[name]
    accumulates [zeroed channels, total channels] seen at that module (dense-prefix positions
    count as kept). ``dense_prefix``: the first positions of every sequence (dimension -2 of
    inputs [..., T, in_features]) stay dense, as a prompt does when the backend prefills it
    dense (``prefill="dense"``); None: the enclosing :func:`dense_prompt`'s, else 0.
    """
    if dense_prefix is None:
        dense_prefix = _DENSE_PREFIX.get()
    if dense_prefix < 0:
        raise ValueError(f"dense_prefix is a number of positions >= 0, got {dense_prefix}")
    handles = []

    def hook_for(name: str, tau: torch.Tensor):
        def hook(module, args):  # noqa: ANN001
            x = args[0]
            keep = x.abs().float() > tau.to(device=x.device, dtype=torch.float32)
            if dense_prefix:
                if x.dim() < 2:
                    raise ValueError(
                        f"dense_prefix needs inputs [..., T, in_features]; {name} got "
                        f"{tuple(x.shape)}"
                    )
                keep[..., :dense_prefix, :] = True
            if counts is not None:
                c = counts.setdefault(name, [0, 0])
                c[0] += int((~keep).sum())
                c[1] += keep.numel()
            return (torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)),
                    *args[1:])  # fmt: skip

        return hook

    for name, tau in thresholds.items():
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(hook_for(name, tau)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def measured_sparsity(
    model: nn.Module, thresholds: dict[str, torch.Tensor], batches: list[torch.Tensor]
) -> dict[str, float]:
    """Fraction of input channels zeroed at each site on ``batches`` (input_ids [B, T]).

    The batches may sit on any device; each is moved to the model's.
    """
    counts: dict[str, list[int]] = {}
    device = next(model.parameters()).device
    with torch.no_grad(), masked_inputs(model, thresholds, counts):
        for ids in batches:
            model(input_ids=ids.to(device), use_cache=False)
    return {n: c[0] / c[1] for n, c in counts.items()}
