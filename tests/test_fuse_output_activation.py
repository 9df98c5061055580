"""passes/fuse_output_activation.py on hand-built graphs: what folds, what must not, and that
the rewritten graph computes what the original did (CPU reference path)."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from was_compile.passes.fuse_output_activation import fuse_output_activation

K, HALF = 8, 6


def _graph(body, ends=(HALF, 2 * HALF), dtype=torch.float32):
    """A GraphModule x -> body(graph, x, gu) around one was.sparse_linear group ``gu``;
    ``body`` returns the graph's output node(s)."""
    root = torch.nn.Module()
    g = torch.Generator().manual_seed(0)
    root.register_buffer("w", torch.randn(K, ends[-1], generator=g).to(dtype))
    root.register_buffer("tau", torch.rand(len(ends), K, generator=g) * 0.5)
    graph = fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(3, K, dtype=dtype)
    w, tau = graph.get_attr("w"), graph.get_attr("tau")
    gu = graph.call_function(torch.ops.was.sparse_linear.default,
                             (x, w, tau, list(ends), None, False, 16, -1.0))  # fmt: skip
    graph.output(body(graph, x, gu))
    return fx.GraphModule(root, graph)


def _half(graph, gu, i):
    return graph.call_function(operator.getitem, (gu, (Ellipsis, slice(i * HALF, (i + 1) * HALF))))


def _mul(graph, a, b, dtype=torch.float32):
    node = graph.call_function(operator.mul, (a, b))
    node.meta["val"] = torch.empty(3, HALF, dtype=dtype)
    return node


def _glu(graph, x, gu):  # silu(gate) * up, gate first
    return _mul(graph, graph.call_function(F.silu, (_half(graph, gu, 0),)), _half(graph, gu, 1))


def _glu_swapped(graph, x, gu):  # up * gelu_tanh(gate), gate second
    gate = graph.call_function(F.gelu, (_half(graph, gu, 1),), {"approximate": "tanh"})
    return _mul(graph, _half(graph, gu, 0), gate)


def _act_only(graph, x, gu):  # relu(fc1)
    node = graph.call_function(F.relu, (gu,))
    node.meta["val"] = torch.empty(3, 2 * HALF)
    return node


def _chunked(graph, x, gu):  # a fused gate_up: chunk(2) of one segment
    parts = graph.call_function(torch.chunk, (gu, 2), {"dim": -1})
    gate = graph.call_function(operator.getitem, (parts, 0))
    up = graph.call_function(operator.getitem, (parts, 1))
    return _mul(graph, graph.call_function(F.silu, (gate,)), up)


def _up_also_read(graph, x, gu):  # the up half is an output too: gu must stay
    up = _half(graph, gu, 1)
    return (_mul(graph, graph.call_function(F.silu, (_half(graph, gu, 0),)), up), up)


def _inplace(graph, x, gu):
    act = graph.call_function(F.silu, (_half(graph, gu, 0),), {"inplace": True})
    return _mul(graph, act, _half(graph, gu, 1))


def _upcast(graph, x, gu):  # x in another dtype than the group's output
    act = graph.call_function(F.silu, (_half(graph, gu, 0),))
    return _mul(graph, act, _half(graph, gu, 1), dtype=torch.float64)


@pytest.mark.parametrize(
    "body,ends,fused",
    [
        (_glu, (HALF, 2 * HALF), 1),
        (_glu_swapped, (HALF, 2 * HALF), 1),
        (_act_only, (5, 2 * HALF), 1),
        (_chunked, (2 * HALF,), 1),
        (_up_also_read, (HALF, 2 * HALF), 0),
        (_inplace, (HALF, 2 * HALF), 0),
        (_upcast, (HALF, 2 * HALF), 0),
        (_glu, (4, 2 * HALF), 0),  # unequal halves: not a gate|up pair
    ],
)
def test_what_folds_and_what_it_computes(body, ends, fused):
    gm = _graph(body, ends)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(1))
    want = gm(x)
    assert fuse_output_activation(gm) == fused
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert (torch.ops.was.sparse_linear_act.default in targets) == bool(fused)
    if fused:  # nothing of the unfused chain is left
        assert targets == [torch.ops.was.sparse_linear_act.default]
    got = gm(x)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
