"""CUDA-graph timing shared by the GPU benchmarks (``decode.py``, ``kernels.py``,
``tile_probe.py``).

A callable is captured once in a CUDA graph, after one warm-up call on a side stream (the
order PyTorch's CUDA-graph notes prescribe: lazy initialisation, autotuning and allocator
warm-up happen outside the capture), and the graph's replays are timed by a timer the caller
picks, so each benchmark keeps its own protocol:

* :func:`do_bench_ms`: ``triton.testing.do_bench``, median, L2 flushed before each replay
  (the weights stream from HBM as they do in decode); ``warmup_ms``/``rep_ms`` are budgets of
  GPU time in milliseconds, not call counts;
* any other ``timer(fn) -> ms``, such as ``decode.Clock.median_ms`` (CUDA events, median, no
  L2 flush).

:func:`sequence_ms` is the other protocol: calls that each read their own copy of the weights,
captured back to back in one graph (as a decode step runs a model's layers), timed without any
flush; per call. It lives in the package (``was_compile.kernels.graph_timing``, which ``was
tune`` uses too) with :func:`capture_graph`, :func:`copies_for`, :func:`events_ms` and
:func:`l2_bytes`; this module hands them on, imported on first use.

Every time is in milliseconds. torch and triton are imported inside the functions, so a script
may import this module before it sets ``TRITON_INTERPRET`` (``kernels.py --smoke``).

Scripts run as ``python benchmarks/X.py`` find this module because Python puts the script's
folder (``benchmarks/``) first on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Timer = Callable[[Callable[[], object]], float]
_FROM_PACKAGE = ("capture_graph", "copies_for", "events_ms", "l2_bytes", "sequence_ms")


def __getattr__(name: str):
    """``capture_graph``, ``copies_for``, ``events_ms``, ``l2_bytes``, ``sequence_ms`` from
    ``was_compile.kernels.graph_timing``, imported when first asked for (that imports torch)."""
    if name in _FROM_PACKAGE:
        from was_compile.kernels import graph_timing

        return getattr(graph_timing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def graph_ms(fn: Callable[[], object], timer: Timer) -> float:
    """Milliseconds ``timer`` reports for replays of ``fn`` captured in one CUDA graph.

    The graph (and the memory its capture pool holds) is released before returning.
    """
    from was_compile.kernels.graph_timing import capture_graph

    graph = capture_graph(fn)
    try:
        return timer(graph.replay)
    finally:
        del graph


def do_bench_ms(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn`` by ``triton.testing.do_bench`` (L2 flushed before each
    call; ``warmup_ms`` and ``rep_ms`` are GPU-time budgets in ms, from which do_bench derives
    the call counts)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def copy_bandwidth_Bps(device: torch.device, timer: Timer, numel: int = 2**29) -> float:
    """Bytes read + written per second by a device-to-device copy of ``numel`` random bf16
    values (1 GiB by default), timed by ``timer`` (milliseconds per call): the bandwidth that
    the benchmarks' byte limits divide by."""
    import torch

    src = torch.empty(numel, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)
