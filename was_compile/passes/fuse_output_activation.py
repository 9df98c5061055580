"""Fold an MLP's ``act(gate) * up`` into the gate|up kernel: -> ``was.sparse_linear_act``.

After ``rewrite_sparse_linear`` an MLP reads, per block,

    gu = was.sparse_linear(h, W_gate|up, ends=[I, 2I], ...)   # one launch for gate and up
    x = act(gu[..., 0:I]) * gu[..., I:2I]                     # Inductor: one more kernel
    y = was.sparse_linear(x, W_down, ...)

This pass replaces the first two lines by ``x = was.sparse_linear_act(h, W_gate|up, ...,
act, gated=True, gate_first=True)``, whose decode kernel writes x from its split-K epilogue
(``kernels/output_activation.py``): one kernel launch, and the gap around it, fewer per block
and decode step. ``act(fc1)`` of a plain MLP folds the same way (``gated=False``).

Recognised from the graph, not from names: x is ``act(a) * b`` (either operand order) with a
and b the two halves of one ``was.sparse_linear`` group (two equal segments, or one fused
gate_up; ``t[..., i:j]`` slices, or the pieces of ``chunk``/``split`` along the last
dimension), or ``act(t)`` of a whole group output; act is silu, gelu (erf or tanh form) or
relu, not in place; x has the group's dtype; and nothing else reads the group's output or
act(a). Anything else is left as it is.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from ..kernels import ops as _ops  # noqa: F401  (registers the ops)
from .detect_sites import _tensor_meta, op_name

MUL_NAMES = frozenset({"mul", "__mul__"})
ACT_NAMES = frozenset({"silu", "gelu", "relu"})
SPLIT_NAMES = frozenset({"chunk", "split"})


def _group(node: object) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target is torch.ops.was.sparse_linear.default
    )


def _shape_dtype(node: object) -> tuple[int, int, torch.dtype] | None:
    """(dims, last-dim size, dtype) of a node's value. A ``was.sparse_linear`` node carries
    the meta of the linear it replaced (one segment's width), so its own is read from its
    arguments: N is the last segment end, the dtype the input's. (A ``sparse_linear_act``
    node made here carries the meta of the node it replaced, which is right.)"""
    if _group(node):
        inner = _shape_dtype(node.args[0])
        return None if inner is None else (inner[0], node.args[3][-1], inner[2])
    t = _tensor_meta(node)
    return None if t is None or t.dim() == 0 else (t.dim(), t.shape[-1], t.dtype)


def _activation(node: object) -> tuple[str, fx.Node] | None:
    """(activation name, operand) when ``node`` is a supported activation call."""
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


def _match(x: fx.Node) -> tuple[fx.Node, str, bool, bool, list[fx.Node]] | None:
    """(group node, act, gated, gate_first, nodes left unused) when x folds, else None."""
    xt = _shape_dtype(x)
    if xt is None:
        return None
    if op_name(x) in MUL_NAMES and len(x.args) == 2 and not x.kwargs:
        for a, b in (x.args, x.args[::-1]):
            act = _activation(a)
            if act is None or len(a.users) != 1:
                continue
            gate, up = _column_range(act[1]), _column_range(b)
            if gate is None or up is None or gate[0] is not up[0] or not _group(gate[0]):
                continue
            ends = list(gate[0].args[3])
            half = ends[-1] // 2
            if ends not in ([half, 2 * half], [2 * half]) or gate[2] != half or up[2] != half:
                continue
            gd = _shape_dtype(gate[0])
            if {gate[1], up[1]} != {0, half} or gd is None or gd[2] != xt[2]:
                continue
            return gate[0], act[0], True, gate[1] == 0, [x, a, act[1], b]
        return None
    act = _activation(x)
    whole = _column_range(act[1]) if act is not None else None
    if whole is None or not _group(whole[0]) or whole[1] != 0:
        return None
    gd = _shape_dtype(whole[0])
    if whole[2] != whole[0].args[3][-1] or gd is None or gd[2] != xt[2]:
        return None
    return whole[0], act[0], False, True, [x] + ([act[1]] if act[1] is not whole[0] else [])


def _only_read_by(group: fx.Node, dead: list[fx.Node]) -> bool:
    """Every reader of the group's output, of the chunk/split pieces and slices taken from it
    and of act(gate) is one of the nodes ``dead`` (x = dead[0] and what only x reads), so
    nothing needs them once x is fused."""
    splits = {d.args[0] for d in dead if op_name(d) == "getitem" and d.args[0] is not group}
    chain = set(dead) | splits
    return all(set(n.users) <= chain for n in [group, *splits, *dead[1:]])


def fuse_output_activation(gm: fx.GraphModule) -> int:
    """Rewrite every foldable ``act(gate) * up`` (or ``act(y)``) of a ``was.sparse_linear``
    group into one ``was.sparse_linear_act``; return how many were rewritten."""
    graph = gm.graph
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or op_name(node) not in MUL_NAMES | ACT_NAMES:
            continue
        match = _match(node)
        if match is None or not _only_read_by(match[0], match[4]):
            continue
        group, act, gated, gate_first, dead = match
        with graph.inserting_before(node):
            new = graph.call_function(
                torch.ops.was.sparse_linear_act.default,
                (*group.args[:8], act, gated, gate_first),
            )
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        for d in [*dead, *(d.args[0] for d in dead if op_name(d) == "getitem"), group]:
            if d.op == "call_function" and not d.users and d in graph.nodes:
                graph.erase_node(d)
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused
