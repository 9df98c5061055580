"""torch.ops.was.sparse_linear against a float64 reference, and its registration (opcheck)."""

import pytest
import torch

from was_compile.kernels.reference import sparse_linear_reference

F32 = dict(atol=1e-5, rtol=1e-5)
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def _case(m, k, segments, dtype, bias, seed=0, drop=0.5):
    g = torch.Generator().manual_seed(seed)
    n = sum(segments)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(k, n, generator=g) / k**0.5).to(dtype)
    # Per-segment thresholds at the `drop` quantile of |x| scaled per channel.
    scale = torch.rand(len(segments), k, generator=g) + 0.5
    tau = (x.float().abs().quantile(drop) * scale).float()
    ends = torch.tensor(segments).cumsum(0).tolist()
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return x, w, tau, ends, b


def _reference64(x, w, tau, ends, b):
    # The mask is decided on the input as given (x.abs() in its own dtype), the sum in float64.
    keep = [x.abs().float() > tau[s] for s in range(len(ends))]
    outs, start = [], 0
    for s, end in enumerate(ends):
        xm = torch.where(keep[s], x.double(), 0.0)
        outs.append(xm @ w[:, start:end].double())
        start = end
    y = torch.cat(outs, -1)
    return y + b.double() if b is not None else y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,segments", [(1, 67, [45]), (3, 130, [17, 9, 9]), (16, 33, [64, 7])])
@pytest.mark.parametrize("bias", [False, True])
def test_op_matches_float64_reference(dtype, m, k, segments, bias):
    x, w, tau, ends, b = _case(m, k, segments, dtype, bias)
    y = torch.ops.was.sparse_linear(x, w, tau, ends, b, True, 16)
    assert y.dtype == dtype and y.shape == (m, sum(segments))
    ref = _reference64(x, w, tau, ends, b)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.double(), ref, atol=atol * k**0.5, rtol=rtol)
    # The mask dropped something and kept something.
    kept = (x.abs().float() > tau[0]).float().mean()
    assert 0.1 < kept < 0.9


def test_leading_dims_and_prefill_policy():
    x, w, tau, ends, b = _case(40, 24, [10, 6], torch.float32, True, seed=3)
    x3 = x.reshape(2, 20, 24)
    sparse = torch.ops.was.sparse_linear(x3, w, tau, ends, b, True, 16)
    dense = torch.ops.was.sparse_linear(x3, w, tau, ends, b, False, 16)
    torch.testing.assert_close(sparse.reshape(40, -1).double(), _reference64(x, w, tau, ends, b),
                               **F32)  # fmt: skip
    torch.testing.assert_close(dense, x3 @ w + b)  # 40 rows > 16: prefill runs dense
    one = torch.ops.was.sparse_linear(x3[:1, :1], w, tau, ends, b, False, 16)
    torch.testing.assert_close(one[0].double(), _reference64(x[:1], w, tau, ends, b), **F32)


def test_all_and_none_dropped():
    x, w, tau, ends, b = _case(2, 20, [8, 8], torch.float32, True, seed=5)
    none = torch.full_like(tau, -1.0)
    every = torch.full_like(tau, float("inf"))
    torch.testing.assert_close(
        torch.ops.was.sparse_linear(x, w, none, ends, b, True, 16), x @ w + b
    )
    torch.testing.assert_close(
        torch.ops.was.sparse_linear(x, w, every, ends, b, True, 16), b.expand(2, -1)
    )


def test_reference_is_the_op_semantics():
    x, w, tau, ends, b = _case(4, 31, [5, 12], torch.float32, True, seed=9)
    torch.testing.assert_close(
        sparse_linear_reference(x, w, tau, ends, b).double(),
        _reference64(x, w, tau, ends, b),
        **F32,
    )


def test_opcheck():
    x, w, tau, ends, b = _case(3, 19, [7, 5], torch.float32, True, seed=11)
    torch.library.opcheck(torch.ops.was.sparse_linear.default, (x, w, tau, ends, b, True, 16))
    torch.library.opcheck(torch.ops.was.sparse_linear.default, (x, w, tau, ends, None, False, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,sparse_prefill", [(1, True), (5, True), (5, False)])
def test_act_op_is_sparse_linear_then_activation(dtype, m, sparse_prefill):
    """sparse_linear_act == silu(gate) * up of sparse_linear's output on the CPU path (decode
    rows and prefill, masked or dense); the product from float64 within the dtype's rounding."""
    x, w, tau, ends, _ = _case(m, 37, [12, 12], dtype, False, seed=m)
    h = torch.ops.was.sparse_linear_act(x, w, tau, ends, None, sparse_prefill, 4, -1.0, "silu",
                                        True, True)  # fmt: skip
    assert h.shape == (m, 12) and h.dtype == dtype
    y64 = _reference64(x, w, tau, ends, None) if sparse_prefill else x.double() @ w.double()
    want = torch.nn.functional.silu(y64[:, :12]) * y64[:, 12:]
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(h.double(), want, atol=atol * 37**0.5 * 4, rtol=rtol * 4)


def test_act_opcheck():
    x, w, tau, ends, b = _case(3, 19, [7, 7], torch.float32, True, seed=11)
    op = torch.ops.was.sparse_linear_act.default
    torch.library.opcheck(op, (x, w, tau, ends, b, True, 16, 0.5, "silu", True, False))
    torch.library.opcheck(op, (x, w, tau, ends, None, False, 1, -1.0, "gelu", False, True))


def test_backward_is_refused():
    x, w, tau, ends, b = _case(1, 8, [4], torch.float32, False)
    x.requires_grad_(True)
    y = torch.ops.was.sparse_linear(x, w, tau, ends, None, True, 16)
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()
