"""Chain the graph's sparse GEMVs: each one, once done, prefetches the next one's weight to L2.

After ``rewrite_sparse_linear`` and ``fuse_output_activation`` a decoder graph holds, per
block, ``was.sparse_linear`` (q|k|v), ..., (o), ``was.sparse_linear_act`` (gate|up), (down),
in execution order, with norms, rotary, attention and residual adds between them. This pass
gives every such call but the last the next call's ``weight_t`` (a ``get_attr`` node, moved
up so it precedes its new reader) and a byte count: the smaller of the option's limit and the
next weight's size. The decode kernel then asks L2 for those first bytes after its epilogue
(``kernels/l2_prefetch.py``), so they move while the kernels between the two GEMVs run.

The order is the graph's node order; between two sparse calls there is always a data
dependency in a decoder (each GEMV's input derives from the previous one's output), so it is
also the order the calls run in. Only calls in one graph are chained (a graph break starts a
new chain).
"""

from __future__ import annotations

__all__ = ["chain_prefetch"]

import torch
from torch import fx

from ..kernels import ops as _ops  # noqa: F401  (registers torch.ops.was.*)


def _is_sparse_call(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (
        torch.ops.was.sparse_linear.default,
        torch.ops.was.sparse_linear_act.default,
    )


def _weight_bytes(gm: fx.GraphModule, w: fx.Node) -> int:
    t = getattr(gm, w.target)
    return t.numel() * t.element_size()


def chain_prefetch(gm: fx.GraphModule, limit_bytes: int) -> int:
    """Give each sparse call the next one's weight to prefetch, up to ``limit_bytes`` bytes
    (0: nothing is changed); return how many calls now prefetch."""
    if limit_bytes <= 0:
        return 0
    calls = [n for n in gm.graph.nodes if _is_sparse_call(n)]
    chained = 0
    for cur, nxt in zip(calls, calls[1:]):
        w = nxt.args[1]
        if not isinstance(w, fx.Node) or w.op != "get_attr":
            continue
        nbytes = min(int(limit_bytes), _weight_bytes(gm, w), 2**31 - 1)
        nbytes -= nbytes % 128  # whole L2 lines
        if nbytes <= 0:
            continue
        cur.prepend(w)  # a get_attr reads nothing: safe to move before its new, earlier reader
        cur.kwargs = {**cur.kwargs, "prefetch": w, "prefetch_bytes": nbytes}
        chained += 1
    if chained:
        gm.graph.lint()
        gm.recompile()
    return chained
