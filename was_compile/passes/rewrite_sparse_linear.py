"""Rewrite each site group of a Dynamo graph into one ``torch.ops.was.sparse_linear`` call.

The group's transposed weights, its bias and its thresholds [S, K] become buffers of the
GraphModule (``get_attr``), so they are inputs of the compiled graph, not constants: a new
schedule is an in-place copy into the threshold buffer, with no recompile.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from ..kernels import ops as _ops  # noqa: F401  (registers torch.ops.was.sparse_linear)
from .detect_sites import GraphSite
from .weight_layout import GroupWeights


@dataclass
class GroupPlan:
    """One group to rewrite: members in column order, their weights and thresholds [S, K]."""

    members: list[GraphSite]
    weights: GroupWeights
    thresholds: torch.Tensor
    sparsity: float = -1.0  # the group's byte-weighted scheduled sparsity (kernel tuning hint)


def _register(gm: fx.GraphModule, name: str, tensor: torch.Tensor) -> None:
    """A buffer of ``gm`` that AOTAutograd lifts to a (static, for CUDA graphs) input.

    AOTAutograd maps every buffer of a Dynamo graph to a Dynamo source; ours get a constant
    source of their own name.
    """
    from torch._dynamo.source import ConstantSource

    gm.register_buffer(name, tensor, persistent=False)
    if hasattr(gm, "_param_name_to_source"):
        gm._param_name_to_source[name] = ConstantSource(name)


def rewrite_sparse_linear(
    gm: fx.GraphModule, plans: list[GroupPlan], sparse_prefill: bool, max_decode_rows: int
) -> int:
    """Replace every planned group by one sparse_linear call; return the number of sites
    rewritten."""
    rewritten = 0
    for gi, plan in enumerate(plans):
        prefix = f"_was_group{gi}"
        _register(gm, f"{prefix}_weight_t", plan.weights.weight_t)
        _register(gm, f"{prefix}_thresholds", plan.thresholds)
        if plan.weights.bias is not None:
            _register(gm, f"{prefix}_bias", plan.weights.bias)
        graph = gm.graph
        order = {n: i for i, n in enumerate(graph.nodes)}
        first = min((m.linear.node for m in plan.members), key=order.__getitem__)
        x = plan.members[0].linear.input
        ends = [b for _, b in plan.weights.columns]
        with graph.inserting_before(first):
            w = graph.get_attr(f"{prefix}_weight_t")
            tau = graph.get_attr(f"{prefix}_thresholds")
            bias = graph.get_attr(f"{prefix}_bias") if plan.weights.bias is not None else None
            out = graph.call_function(
                torch.ops.was.sparse_linear.default,
                (x, w, tau, ends, bias, sparse_prefill, max_decode_rows, plan.sparsity),
            )
            out.meta.update(first.meta)
        for member, (a, b) in zip(plan.members, plan.weights.columns):
            node = member.linear.node
            if len(plan.members) == 1:
                replacement = out
            else:
                with graph.inserting_after(out):
                    replacement = graph.call_function(
                        operator.getitem, (out, (Ellipsis, slice(a, b)))
                    )
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            rewritten += 1
    gm.graph.lint()
    gm.recompile()
    return rewritten
