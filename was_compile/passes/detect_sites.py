"""Find activation -> linear sites in a Dynamo FX graph.

A *site* is a linear layer whose input can be sparsified. Sites are recognised from the
dataflow of the graph, never from module names:

* attention inputs (``q``, ``k``, ``v`` or a fused combination: ``qkv``, ``qk``, ``kv``,
  ``qv``): linears whose output reaches the query/key/value operand of an attention op
  (``scaled_dot_product_attention``, or the ``matmul -> softmax -> matmul`` pattern of eager
  attention);
* attention output (``o``): a linear whose input is the attention op's output, reached
  through layout ops only (view, transpose, contiguous, ...);
* MLP output (``down``): a linear whose input is computed from other linears' outputs through
  pointwise ops only (``act(gate) * up``, ``gelu(fc1)``, ...); those producers are the MLP
  inputs (``gate`` and ``up``, ``gate_up`` when fused and chunked, or ``up`` for a plain
  ``fc1``).

Linears matching none of these (``lm_head``, adapters, classifier heads) are not sites.
Module paths only *name* a site; they play no part in detecting it.
"""

from __future__ import annotations

import operator
import re
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import fx

LAYOUT_OPS = frozenset(
    {
        "view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten",
        "to", "float", "half", "bfloat16", "type", "type_as", "clone", "dropout",
        "squeeze", "unsqueeze", "expand", "getitem", "chunk", "split", "unbind",
        "narrow", "_to_copy", "detach",
    }
)  # fmt: skip
# Pointwise ops allowed between an MLP's input linears and its output linear.
POINTWISE_OPS = LAYOUT_OPS | frozenset(
    {
        "mul", "add", "sub", "truediv", "div", "neg", "pow", "tanh", "sigmoid", "silu",
        "gelu", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "softplus", "mish",
        "hardswish", "hardsigmoid", "hardtanh", "exp", "erf", "clamp", "clip", "abs",
        "square", "mul_", "add_", "silu_", "relu_", "gelu_", "glu", "sqrt",
        "__mul__", "__add__", "__truediv__", "__rmul__", "__radd__",
    }
)  # fmt: skip
# Ops that only multiply or move values: used to tell an MLP's "up" branch from its "gate".
GATE_NEUTRAL_OPS = LAYOUT_OPS | frozenset({"mul", "__mul__", "mul_"})

LINEAR_NAMES = frozenset({"linear"})
ADDMM_NAMES = frozenset({"addmm"})
MATMUL_NAMES = frozenset({"matmul", "bmm", "__matmul__"})
SOFTMAX_NAMES = frozenset({"softmax", "_softmax", "softmax_"})


def op_name(node: fx.Node) -> str:
    """A short, family-independent name for what ``node`` computes ("" for non-ops)."""
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        if node.target is operator.setitem:
            return "setitem"
        name = getattr(node.target, "__name__", "") or str(node.target)
        return name.split(".")[-1]
    return ""


@dataclass
class LinearNode:
    """A linear layer as it appears in the graph.

    ``weight_layout`` is ``"out_in"`` for ``F.linear`` (weight [N, K]) and ``"in_out"`` for
    ``addmm(bias, x, weight)`` (GPT-2's Conv1D, weight [K, N]).
    """

    node: fx.Node
    input: fx.Node
    weight: fx.Node
    bias: fx.Node | None
    weight_layout: str
    in_features: int
    out_features: int


@dataclass
class Attention:
    """One attention op: for each role (q/k/v) the op reading it and the operand node,
    and the node holding the attention output."""

    index: int
    output: fx.Node
    operands: dict[str, tuple[fx.Node, fx.Node]]
    position: int


@dataclass
class GraphSite:
    """A site found in a graph, before it is given a public :class:`~was_compile.Site`."""

    linear: LinearNode
    kind: str
    block: int
    name: str = ""
    group: str = ""
    group_members: list[str] = field(default_factory=list)


def _tensor_meta(node: object) -> torch.Tensor | None:
    if isinstance(node, fx.Node):
        val = node.meta.get("example_value", node.meta.get("val"))
        if isinstance(val, torch.Tensor):
            return val
    return None


def _is_weight(node: object) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op in ("placeholder", "get_attr")
        and (t := _tensor_meta(node)) is not None
        and t.dim() == 2
    )


def find_linears(graph: fx.Graph) -> list[LinearNode]:
    """Every ``F.linear`` or Conv1D-style ``addmm`` whose weight is a graph input."""
    out = []
    for node in graph.nodes:
        name = op_name(node)
        if node.op != "call_function":
            continue
        if name in LINEAR_NAMES and len(node.args) >= 2 and _is_weight(node.args[1]):
            w = _tensor_meta(node.args[1])
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            out.append(
                LinearNode(node, node.args[0], node.args[1], bias, "out_in", w.shape[1], w.shape[0])
            )
        elif name in ADDMM_NAMES and len(node.args) >= 3 and _is_weight(node.args[2]):
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                continue
            w = _tensor_meta(node.args[2])
            out.append(
                LinearNode(node, node.args[1], node.args[2], node.args[0], "in_out", *w.shape)
            )
    return out


def _users_through(node: fx.Node, allowed: frozenset[str], limit: int = 64) -> list[fx.Node]:
    """Nodes reached forward from ``node`` through ops in ``allowed`` (inclusive frontier)."""
    seen, frontier, reached = {node}, deque([node]), []
    while frontier and len(seen) < limit:
        cur = frontier.popleft()
        for user in cur.users:
            if user in seen:
                continue
            seen.add(user)
            reached.append(user)
            if op_name(user) in allowed:
                frontier.append(user)
    return reached


def find_attentions(graph: fx.Graph) -> list[Attention]:
    """Attention ops in graph order: SDPA calls and eager ``softmax(q @ k^T) @ v`` patterns."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    found: list[Attention] = []
    for node in graph.nodes:
        name = op_name(node)
        if name == "scaled_dot_product_attention":
            ops = {}
            for i, (role, kw) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
                arg = node.args[i] if len(node.args) > i else node.kwargs.get(kw)
                if isinstance(arg, fx.Node):
                    ops[role] = (node, arg)
            out = node
            for user in node.users:  # ops returning tuples
                if op_name(user) == "getitem" and user.args[1] == 0:
                    out = user
            found.append(Attention(0, out, ops, order[node]))
        elif name in SOFTMAX_NAMES:
            qk = _matmul_before_softmax(node)
            pv = next(
                (
                    u
                    for u in _users_through(node, LAYOUT_OPS | {"dropout"}, limit=8)
                    if op_name(u) in MATMUL_NAMES and isinstance(u.args[0], fx.Node)
                ),
                None,
            )
            if qk is not None and pv is not None:
                ops = {"q": (qk, qk.args[0]), "k": (qk, qk.args[1]), "v": (pv, pv.args[1])}
                found.append(Attention(0, pv, ops, order[node]))
    found.sort(key=lambda a: a.position)
    for i, att in enumerate(found):
        att.index = i
    return found


def _matmul_before_softmax(softmax: fx.Node) -> fx.Node | None:
    """The ``q @ k^T`` matmul feeding a softmax through scaling, masking and casts."""
    frontier = deque([softmax.args[0]])
    seen = set()
    while frontier:
        cur = frontier.popleft()
        if not isinstance(cur, fx.Node) or cur in seen or len(seen) > 16:
            continue
        seen.add(cur)
        if op_name(cur) in MATMUL_NAMES:
            return cur
        if op_name(cur) in POINTWISE_OPS | {"where", "masked_fill", "softcap"}:
            frontier.extend(a for a in cur.args if isinstance(a, fx.Node))
    return None


def _attention_roles(lin: LinearNode, stops: set[fx.Node], operand_roles: dict) -> set[str]:
    """Which attention operands (q/k/v) the linear's output flows into.

    Walks forward through any op but other linears and attention ops; an in-place op
    (``index_copy_``, ``copy_``, ``setitem``: KV-cache writes) forwards the flow to the tensor
    it mutates, since attention then reads that tensor.
    """
    roles: set[str] = set()
    seen, frontier = {lin.node}, deque([lin.node])
    while frontier and len(seen) < 400:
        cur = frontier.popleft()
        for user in cur.users:
            for role in operand_roles.get((user, cur), ()):
                roles.add(role)
            if user in seen or user in stops:
                continue
            seen.add(user)
            frontier.append(user)
            name = op_name(user)
            if (name.endswith("_") and not name.endswith("__")) or name == "setitem":
                target = user.args[0] if user.args else None
                if isinstance(target, fx.Node) and target is not cur and target not in seen:
                    seen.add(target)
                    frontier.append(target)
    return roles


def _source_of_layout(node: object) -> fx.Node | None:
    """Walk back through layout ops; return where the value came from."""
    cur = node
    for _ in range(16):
        if not isinstance(cur, fx.Node):
            return None
        if op_name(cur) not in LAYOUT_OPS or not cur.args:
            return cur
        cur = cur.args[0]
    return None


def _holds_tensor(val: object) -> bool:
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in val)


def _pointwise_producers(node: fx.Node, linear_nodes: set[fx.Node]) -> list[fx.Node] | None:
    """Linears that ``node`` is computed from through pointwise ops only, or None.

    Returns None as soon as any leaf is something other than a linear, a parameter or a
    constant (an embedding, a reduction, a norm, a graph input): then ``node`` is not an MLP's
    hidden activation but, for instance, a normalised residual stream.
    """
    producers: list[fx.Node] = []
    seen, frontier = set(), deque([node])
    while frontier:
        cur = frontier.popleft()
        if not isinstance(cur, fx.Node) or cur in seen:
            continue
        seen.add(cur)
        if len(seen) > 64:
            return None
        if cur in linear_nodes:
            producers.append(cur)
            continue
        val = cur.meta.get("example_value", cur.meta.get("val"))
        if val is not None and not _holds_tensor(val):
            continue  # sizes and other scalars (x.size(-1) in a view) are neutral
        if cur.op in ("placeholder", "get_attr"):
            t = _tensor_meta(cur)
            if t is None or isinstance(t, torch.nn.Parameter) or t.dim() <= 1:
                continue
            return None
        if cur.op != "call_function" and cur.op != "call_method":
            return None
        if op_name(cur) not in POINTWISE_OPS:
            return None
        for a in list(cur.args) + list(cur.kwargs.values()):
            if isinstance(a, fx.Node):
                frontier.append(a)
            elif isinstance(a, (list, tuple)):
                frontier.extend(x for x in a if isinstance(x, fx.Node))
    return producers or None


def _passes_activation(start: fx.Node, end: fx.Node) -> bool:
    """Whether some path start -> end goes through an op other than layout or multiply."""
    seen, frontier = set(), deque([(start, False)])
    while frontier:
        cur, act = frontier.popleft()
        if cur is end:
            if act:
                return True
            continue
        if (cur, act) in seen or len(seen) > 128:
            continue
        seen.add((cur, act))
        for user in cur.users:
            frontier.append(
                (user, act or (user is not end and op_name(user) not in GATE_NEUTRAL_OPS))
            )
    return False


def _split_reaches_mul_twice(producer: fx.Node, consumer_input: fx.Node) -> bool:
    """A fused ``gate_up`` linear: its output is split and two pieces meet again."""
    pieces = [u for u in producer.users if op_name(u) in ("chunk", "split", "getitem", "unbind")]
    if not pieces:
        return False
    getitems = [
        g for p in pieces for g in ([p] if op_name(p) == "getitem" else list(p.users))
        if op_name(g) == "getitem"
    ]  # fmt: skip
    return len(getitems) >= 2


def classify_linears(graph: fx.Graph) -> tuple[list[GraphSite], list[Attention]]:
    """Classify every linear of ``graph`` into a site kind (unnamed, ungrouped)."""
    linears = find_linears(graph)
    attentions = find_attentions(graph)
    by_node = {lin.node: lin for lin in linears}
    order = {n: i for i, n in enumerate(graph.nodes)}
    att_outputs = {a.output: a for a in attentions}
    operand_roles: dict[tuple[fx.Node, fx.Node], list[str]] = {}
    for att in attentions:
        for role, (consumer, operand) in att.operands.items():
            operand_roles.setdefault((consumer, operand), []).append(role)
    stops = set(by_node) | {consumer for consumer, _ in operand_roles}

    def block_at(node: fx.Node) -> int:
        pos = order[node]
        prior = [a.index for a in attentions if a.position <= pos]
        return prior[-1] if prior else 0

    kinds: dict[fx.Node, GraphSite] = {}
    for lin in linears:
        src = _source_of_layout(lin.input)
        if src in att_outputs:
            kinds[lin.node] = GraphSite(lin, "o", att_outputs[src].index)
    for lin in linears:
        if lin.node in kinds:
            continue
        producers = _pointwise_producers(lin.input, set(by_node))
        if not producers:
            continue
        kinds[lin.node] = GraphSite(lin, "down", block_at(lin.node))
        if len(producers) == 1:
            kind = "gate_up" if _split_reaches_mul_twice(producers[0], lin.input) else "up"
            kinds[producers[0]] = GraphSite(by_node[producers[0]], kind, block_at(lin.node))
        else:
            gates = [p for p in producers if _passes_activation(p, lin.input)]
            for p in producers:
                kind = "gate" if (p in gates and len(gates) < len(producers)) else "up"
                kinds[p] = GraphSite(by_node[p], kind, block_at(lin.node))
    for lin in linears:
        if lin.node in kinds:
            continue
        roles = _attention_roles(lin, stops, operand_roles)
        if roles:
            kind = "".join(r for r in ("q", "k", "v") if r in roles)
            kinds[lin.node] = GraphSite(lin, kind, _block_of_roles(lin, attentions, order))
    sites = sorted(kinds.values(), key=lambda s: order[s.linear.node])
    return sites, attentions


def _block_of_roles(lin: LinearNode, attentions: list[Attention], order: dict) -> int:
    """The first attention op after this linear: the one it feeds."""
    pos = order[lin.node]
    later = [a.index for a in attentions if a.position > pos]
    return later[0] if later else (attentions[-1].index if attentions else 0)


_KEY = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]|\.([A-Za-z_][A-Za-z0-9_]*)")
_MODULE_KEY = re.compile(r"_modules\[['\"]([^'\"]+)['\"]\]")
_SKIP = {"_modules", "_parameters", "_buffers", "self", "L", "G"}


def weight_source_name(node: fx.Node) -> str:
    """Module path of a weight placeholder, e.g. ``model.layers.0.mlp.down_proj``.

    Parsed from Dynamo's source for the graph input (``L['self']._modules['model']...
    ._parameters['weight']``, or ``L['args'][0]...`` where a wrapper passes the model
    positionally): the root object and the parameter name are dropped.
    """
    grapharg = node.meta.get("grapharg")
    source = getattr(getattr(grapharg, "source", None), "name", None)
    if callable(source):
        source = source()
    if not source:
        return node.name
    source = str(source)
    modules = _MODULE_KEY.findall(source)
    if modules:  # the names of the ``_modules`` hops, whatever the root (``L['self']``, or
        # ``L['args'][0]`` when a wrapper passes the model positionally: transformers 5.24)
        return ".".join(modules)
    keys = [a or b for a, b in _KEY.findall(source)]
    root = 2 if keys[:1] == ["args"] and keys[1:2] and keys[1].isdigit() else 1
    keys = [k for k in keys[root:] if k not in _SKIP]
    if keys and keys[-1] in ("weight",):
        keys = keys[:-1]
    return ".".join(keys)


def detect_sites(graph: fx.Graph, block_offset: int = 0) -> list[GraphSite]:
    """Classified, named and grouped sites of ``graph``.

    ``block_offset`` shifts block indices, for models split into several graphs.
    Sites reading the same input tensor form a group, named ``block{b}.{kinds}``.
    """
    sites, _ = classify_linears(graph)
    groups: dict[fx.Node, list[GraphSite]] = {}
    for s in sites:
        s.block += block_offset
        s.name = weight_source_name(s.linear.weight)
        groups.setdefault(s.linear.input, []).append(s)
    for members in groups.values():
        label = f"block{members[0].block}." + "+".join(m.kind for m in members)
        for m in members:
            m.group = label
            m.group_members = [x.name for x in members]
    return sites
