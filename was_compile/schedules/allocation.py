"""Allocation of sparsity across blocks from measured block sensitivities.

Blocks of a decoder differ a lot in how much sparsifying them costs (on SmolLM2-135M the
first and the last blocks cost several times more than the middle ones), and a uniform
allocation, or a search that starts from it with a few dozen trials over ~30 blocks, wastes
that. Here each block's cost is *measured*: the loss increase on held-out batches (mean
negative log-likelihood per token, nats, over the dense model's) with that block alone at a
high sparsity (0.8) and every other block dense (its sites split by the block's greedy
trajectory). Costs at the budget itself are too small to rank blocks (on SmolLM2 at 0.4-0.6
they were within noise, some negative), and an allocation minimising summed single-block
costs (tried: lower-hull cost curves at 0.4/0.6/0.8, marginal greedy) did no better than
uniform on the search text.

What is used instead is a direction: ``z_b``, the standardised ``-log`` cost, and the
allocations ``budget + alpha * z_b`` moved exactly onto the budget. The TPE search
(:mod:`~was_compile.schedules.tpe`) samples ``alpha`` (and, with ``delta`` > 0, per-block
offsets) and starts from a
few values of ``alpha`` (0 is uniform), so its best is never worse than uniform on the search
objective. Measured on SmolLM2-135M at 60%: search perplexity 89.7 (uniform), 87.4
(``alpha`` = 0.03), 89.7 (0.06), 100.5 (0.09).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .calibration import Calibration
from .greedy import GreedyTrajectories
from .masking import masked_inputs

DEFAULT_LEVELS = (0.8,)
COST_FLOOR = 1e-4  # nats: costs below this count as this (noise)


@torch.no_grad()
def mean_nll(
    model: nn.Module, batches: list[torch.Tensor], thresholds: dict[str, torch.Tensor]
) -> float:
    """Mean next-token negative log-likelihood (nats) of ``model`` on ``batches``
    (input_ids [B, T]), every token's sites masked with ``thresholds``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with masked_inputs(model, thresholds):
        for ids in batches:
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            total -= float(logp.gather(-1, ids[:, 1:, None]).sum())
            count += ids.shape[0] * (ids.shape[1] - 1)
    return total / max(count, 1)


def block_sensitivity(
    model: nn.Module,
    calibration: Calibration,
    trajectories: GreedyTrajectories,
    batches: list[torch.Tensor],
    levels: tuple[float, ...] = DEFAULT_LEVELS,
) -> dict[int, list[float]]:
    """Block -> loss increase (nats per token, one per level of ``levels``) with that block
    alone at that sparsity (per-site split by its greedy trajectory), the rest dense.

    batches: held-out input_ids [B, T]. Cost: ``len(levels) * n_blocks`` forward passes.
    """
    score = trajectories.score
    dense = mean_nll(model, batches, {})
    out: dict[int, list[float]] = {}
    for b in sorted(trajectories.blocks):
        costs = []
        for level in levels:
            per_site = trajectories.block_sparsities(b, level)
            tau = {
                n: calibration.channel_thresholds(n, s, score)
                for n, s in per_site.items()
                if s > 0.0
            }
            costs.append(mean_nll(model, batches, tau) - dense)
        out[b] = costs
    return out


def sensitivity_direction(sensitivity: dict[int, list[float]]) -> dict[int, float]:
    """Block -> z_b, the standardised ``-log`` of its cost at the highest level (mean 0,
    standard deviation 1 over blocks; 0 everywhere if all costs are equal): positive for
    blocks cheaper than the typical block, which should be sparser."""
    blocks = sorted(sensitivity)
    logs = [math.log(max(sensitivity[b][-1], COST_FLOOR)) for b in blocks]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    if sd <= 0.0:
        return {b: 0.0 for b in blocks}
    return {b: -(x - mean) / sd for b, x in zip(blocks, logs)}


def tilted_allocation(
    direction: dict[int, float],
    weights: dict[int, float],
    budget: float,
    alpha: float,
    lo: float,
    hi: float,
) -> dict[int, float]:
    """``clip(budget + alpha * z_b + c, lo, hi)`` with the ``weights``-weighted mean exactly
    ``budget`` (``c`` from :func:`~was_compile.schedules.tpe.project_to_budget`)."""
    from .tpe import project_to_budget

    blocks = sorted(direction)
    raw = [budget + alpha * direction[b] for b in blocks]
    values = project_to_budget(raw, [weights[b] for b in blocks], budget, lo, hi)
    return dict(zip(blocks, values))
