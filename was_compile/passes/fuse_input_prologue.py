"""Fold a site's pointwise input into its kernel: ``act(gate) * up`` -> ``sparse_linear_gated``.

After ``rewrite_sparse_linear`` an MLP reads, per block,

    gu = was.sparse_linear(h, W_gate|up, ...)            # one launch for gate and up
    x = act(gu[..., 0:I]) * gu[..., I:2I]                # Inductor: one more kernel
    y = was.sparse_linear(x, W_down, ...)

This pass replaces the last two lines by ``was.sparse_linear_gated(gu, act, 0, I, I, W_down,
...)``, which computes x inside the down GEMV (``kernels/input_prologue.py``): one kernel
launch and one round trip of x through memory fewer per block and decode step.

Recognised from the graph, not from names: x is ``act(a) * b`` (either operand order) or
``act(a)``, with act one of silu, gelu (erf or tanh), relu (not in place), a and b column
ranges of one tensor (``t[..., i:j]`` slices, or pieces of ``chunk``/``split`` along the last
dimension; a whole tensor is its full range), as wide as the site's input, with x in that
tensor's dtype, and nothing else reading act(a) or x. Anything else is left as it is.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from ..kernels import ops as _ops  # noqa: F401  (registers the ops)
from .detect_sites import _tensor_meta, op_name

MUL_NAMES = frozenset({"mul", "__mul__"})
SPLIT_NAMES = frozenset({"chunk", "split"})
WAS_OPS = ("sparse_linear", "sparse_linear_gated")


def _was_op(node: object) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and any(node.target is getattr(torch.ops.was, name).default for name in WAS_OPS)
    )


def _shape_dtype(node: object) -> tuple[int, int, torch.dtype] | None:
    """(dims, last-dim size, dtype) of a node's value. The outputs of the was ops carry the
    meta of the linear they replaced (one segment's width), so theirs are read from their
    arguments: N is the last segment end, the dtype the input's."""
    if _was_op(node):
        gated = node.target is torch.ops.was.sparse_linear_gated.default
        ends = node.args[7] if gated else node.args[3]
        inner = _shape_dtype(node.args[0])
        return None if inner is None else (inner[0], ends[-1], inner[2])
    t = _tensor_meta(node)
    return None if t is None or t.dim() == 0 else (t.dim(), t.shape[-1], t.dtype)


def _activation(node: object) -> tuple[str, fx.Node] | None:
    """(prologue activation name, operand) when ``node`` is a supported activation call."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or not node.args:
        return None
    name, arg = op_name(node), node.args[0]
    if not isinstance(arg, fx.Node) or node.kwargs.get("inplace", False):
        return None
    if name == "silu" and len(node.args) == 1:
        return "silu", arg
    if name == "relu" and len(node.args) == 1:
        return "relu", arg
    if name == "gelu" and len(node.args) == 1:
        approximate = node.kwargs.get("approximate", "none")
        if approximate in ("none", "tanh"):
            return ("gelu_tanh" if approximate == "tanh" else "gelu"), arg
    return None


def _piece_of_split(split: fx.Node, index: int) -> tuple[fx.Node, int, int] | None:
    """Columns [start, start + width) of its input that piece ``index`` of a chunk/split is."""
    src = split.args[0]
    sd = _shape_dtype(src)
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if sd is None or not isinstance(dim, int) or dim not in (-1, sd[0] - 1):
        return None
    c = sd[1]
    amount = split.args[1] if len(split.args) > 1 else None
    if op_name(split) == "chunk" and isinstance(amount, int) and amount > 0:
        sizes = [math.ceil(c / amount)] * amount
    elif op_name(split) == "split" and isinstance(amount, int) and amount > 0:
        sizes = [amount] * math.ceil(c / amount)
    elif op_name(split) == "split" and isinstance(amount, (list, tuple)):
        sizes = list(amount)
    else:
        return None
    start = sum(sizes[:index])
    if not 0 <= index < len(sizes) or start >= c:
        return None
    return src, start, min(sizes[index], c - start)


def _column_range(node: object) -> tuple[fx.Node, int, int] | None:
    """(t, start, width) when ``node`` is columns [start, start + width) of tensor t along
    the last dimension; a tensor that is none of the forms is its own full range."""
    if not isinstance(node, fx.Node):
        return None
    if op_name(node) == "getitem" and len(node.args) == 2 and isinstance(node.args[0], fx.Node):
        base, index = node.args
        if op_name(base) in SPLIT_NAMES and isinstance(index, int):
            return _piece_of_split(base, index)
        bt = _shape_dtype(base)
        if bt is None:
            return None
        if isinstance(index, slice):
            index = (index,)
        if not isinstance(index, tuple) or not index or not isinstance(index[-1], slice):
            return None
        lead = index[:-1]
        full = slice(None, None, None)
        if lead == (Ellipsis,) or (len(index) == bt[0] and all(i == full for i in lead)):
            start, stop, step = index[-1].indices(bt[1])
            if step == 1 and stop > start:
                return base, start, stop - start
        return None
    sd = _shape_dtype(node)
    return None if sd is None else (node, 0, sd[1])


def _match(x: object, width: int) -> tuple[fx.Node, str, int, int, list[fx.Node]] | None:
    """(src, act, gate_start, up_start, nodes made dead) for a site input x, or None."""
    xt = _shape_dtype(x) if isinstance(x, fx.Node) and len(x.users) == 1 else None
    if xt is None:
        return None
    if op_name(x) in MUL_NAMES and len(x.args) == 2 and not x.kwargs:
        for a, b in (x.args, x.args[::-1]):
            act = _activation(a)
            if act is None or len(a.users) != 1:
                continue
            gate, up = _column_range(act[1]), _column_range(b)
            if gate is None or up is None or gate[0] is not up[0]:
                continue
            if gate[2] != width or up[2] != width:
                continue
            if _shape_dtype(gate[0])[2] != xt[2]:
                continue
            return gate[0], act[0], gate[1], up[1], [x, a, act[1], b]
        return None
    act = _activation(x)
    if act is None:
        return None
    gate = _column_range(act[1])
    if gate is None or gate[2] != width or _shape_dtype(gate[0])[2] != xt[2]:
        return None
    return gate[0], act[0], gate[1], -1, [x, act[1]]


def fuse_input_prologue(gm: fx.GraphModule) -> int:
    """Rewrite every ``was.sparse_linear`` whose input is a foldable ``act(a) [* b]`` into
    ``was.sparse_linear_gated``; return how many were rewritten."""
    graph = gm.graph
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.was.sparse_linear.default:
            continue
        x, weight_t = node.args[0], node.args[1]
        if weight_t.op != "get_attr":  # rewrite_sparse_linear's buffer
            continue
        k = getattr(gm, weight_t.target).shape[0]
        match = _match(x, k)
        if match is None:
            continue
        src, act, gate_start, up_start, dead = match
        with graph.inserting_before(node):
            new = graph.call_function(
                torch.ops.was.sparse_linear_gated.default,
                (src, act, gate_start, up_start, k, *node.args[1:]),
                dict(node.kwargs),
            )
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        for d in dead:  # in use order: x first, then what only it read
            if d is not src and d.op == "call_function" and not d.users:
                graph.erase_node(d)
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused
