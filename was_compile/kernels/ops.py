"""``torch.ops.was.sparse_linear``: the custom op the backend puts in place of each site group
(and ``sparse_linear_act``, the same followed by the activation an MLP applies to it).

Registered through ``torch.library.custom_op`` so it is opaque to Inductor and may branch in
Python on the number of rows (decode kernel vs prefill path) without adding guards; a fake
implementation lets it trace with dynamic shapes and be captured in CUDA graphs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from . import switch_points
from .output_activation import OutputActivation, activation_reference
from .reference import dense_linear, sparse_linear_reference

DECODE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _triton_gemv() -> Callable | None:
    """The Triton decode kernel, or None where it cannot be imported (callers check the
    device)."""
    try:
        from .triton_sparse_gemv import sparse_gemv
    except Exception:  # noqa: BLE001 - any import failure means "use the reference"
        return None
    return sparse_gemv


def _bucket(hint: float | None) -> int:
    from .autotune_configs import sparsity_bucket  # imports triton: only on the CUDA path

    return sparsity_bucket(hint)


def reserve_decode_workspace(weight_t: torch.Tensor, segment_ends: list[int],
                             max_rows: int) -> None:  # fmt: skip
    """Reserve the GPU kernel's split-K workspace for a group (weight_t [K, N], its segment
    ends, up to ``max_rows`` decode rows) so its calls reduce in one kernel
    (``splitk.py``). Call outside CUDA-graph capture; a no-op off the GPU or without Triton."""
    if not weight_t.is_cuda or _triton_gemv() is None:
        return
    from .triton_sparse_gemv import reserve_workspace_for

    reserve_workspace_for(weight_t, segment_ends, max_rows)


def _sparse_linear(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor,
                   segment_ends: list[int], bias: torch.Tensor | None, sparse_prefill: bool,
                   max_decode_rows: int, sparsity_hint: float,
                   activation: OutputActivation | None) -> torch.Tensor:  # fmt: skip
    """Both ops; ``activation``: return act(gate) * up (or act(y)) instead of y."""
    k = x.shape[-1]
    rows = x.numel() // k if k else 0

    def finish(y: torch.Tensor) -> torch.Tensor:
        return y if activation is None else activation_reference(y, activation, segment_ends)

    if rows > max_decode_rows and not sparse_prefill:
        return finish(dense_linear(x, weight_t, bias))
    gemv = _triton_gemv() if x.is_cuda and x.dtype in DECODE_DTYPES else None
    if rows <= max_decode_rows and gemv is not None:
        hint = sparsity_hint if sparsity_hint >= 0 else None
        limit = switch_points.decode_rows_limit(x, k, segment_ends, _bucket(hint))
        if limit is None or rows <= limit:
            y = gemv(x.reshape(rows, k), weight_t, thresholds, segment_ends, bias,
                     sparsity_hint=hint, activation=activation)  # fmt: skip
            return y.reshape(*x.shape[:-1], y.shape[-1])
    return finish(sparse_linear_reference(x, weight_t, thresholds, segment_ends, bias))


@torch.library.custom_op("was::sparse_linear", mutates_args=())
def sparse_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    thresholds: torch.Tensor,
    segment_ends: list[int],
    bias: torch.Tensor | None,
    sparse_prefill: bool,
    max_decode_rows: int,
    sparsity_hint: float = -1.0,
) -> torch.Tensor:
    """Thresholded linear over a group of sibling sites; see :func:`sparse_linear_reference`.

    x [..., K]; weight_t [K, N]; thresholds [S, K] fp32; segment_ends S ints, last == N;
    bias [N] or None. With at most ``max_decode_rows`` rows (tokens x batch) this is decode:
    the sparse kernel runs, up to the number of rows where ``was tune`` measured it faster
    than the masked dense path (``switch_points``; the same mask, cuBLAS) on this GPU.
    Above ``max_decode_rows``, prefill: dense unless ``sparse_prefill``.
    ``sparsity_hint`` (the schedule's sparsity, or -1 for unknown) only picks the kernel's
    autotuning bucket.
    """
    return _sparse_linear(x, weight_t, thresholds, segment_ends, bias, sparse_prefill,
                          max_decode_rows, sparsity_hint, None)  # fmt: skip


@sparse_linear.register_fake
def _(x, weight_t, thresholds, segment_ends, bias, sparse_prefill, max_decode_rows,
      sparsity_hint=-1.0):  # fmt: skip
    torch._check(x.shape[-1] == weight_t.shape[0], lambda: "x and weight_t disagree on K")
    torch._check(thresholds.shape[0] == len(segment_ends), lambda: "one threshold row a segment")
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


@torch.library.custom_op("was::sparse_linear_act", mutates_args=())
def sparse_linear_act(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    thresholds: torch.Tensor,
    segment_ends: list[int],
    bias: torch.Tensor | None,
    sparse_prefill: bool,
    max_decode_rows: int,
    sparsity_hint: float,
    act: str,
    gated: bool,
    gate_first: bool,
) -> torch.Tensor:
    """``sparse_linear`` followed by its output activation (``output_activation.py``), which
    the decode kernel writes in its epilogue: gated, act(gate) * up [..., N / 2] of a group of
    two equal segments (gate first or second); else act(y) [..., N]."""
    activation = OutputActivation(act, gated, gate_first)
    return _sparse_linear(x, weight_t, thresholds, segment_ends, bias, sparse_prefill,
                          max_decode_rows, sparsity_hint, activation)  # fmt: skip


@sparse_linear_act.register_fake
def _(x, weight_t, thresholds, segment_ends, bias, sparse_prefill, max_decode_rows,
      sparsity_hint, act, gated, gate_first):  # fmt: skip
    torch._check(x.shape[-1] == weight_t.shape[0], lambda: "x and weight_t disagree on K")
    torch._check(thresholds.shape[0] == len(segment_ends), lambda: "one threshold row a segment")
    n = weight_t.shape[1]
    return x.new_empty((*x.shape[:-1], n // 2 if gated else n))


def _no_backward(ctx, grad):  # noqa: ANN001
    raise RuntimeError(
        "was.sparse_linear is inference-only: run the compiled model under torch.no_grad() or "
        "torch.inference_mode(), or train the dense model and compile it afterwards"
    )


sparse_linear.register_autograd(_no_backward)
sparse_linear_act.register_autograd(_no_backward)
