"""Timing GPU calls the way decode runs them: back to back in one CUDA graph, each call on its
own copy of the weights, no cache flush.

A decode step replays one CUDA graph in which every linear reads weights no other call reads,
right after a small kernel that wrote a few KB: the weights always come from HBM, and L2 holds
nothing dirty. Timing one call per replay after a memset flush (``triton.testing.do_bench``)
charges every call the write-back of the dirty L2 lines the memset leaves (12-19 us on an H100,
cuBLAS's calls and ours alike; ``benchmarks/kernel_notes.md`` section 9). So ``was tune``
(switch points) and ``benchmarks/kernels.py`` time a list of calls, one per weight copy,
captured back to back (:func:`sequence_ms`), with enough copies that none finds its weights in
L2 (:func:`copies_for`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

__all__ = ["capture_graph", "l2_bytes", "copies_for", "events_ms", "sequence_ms"]


def capture_graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph, after one warm-up call on a side stream (lazy
    initialisation, autotuning and allocator warm-up happen outside the capture).

    ``fn`` runs twice (warm-up, capture); a replay of the returned graph runs it again on the
    current stream with the same memory.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def l2_bytes(device: torch.device) -> int:
    """The device's L2 cache size in bytes (50 MiB on an H100 SXM)."""
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def copies_for(weight_bytes: int, l2: int, min_copies: int = 4, max_copies: int = 64) -> int:
    """How many distinct weight copies a sequence needs so that no call finds its weights in
    L2: together at least three times the L2 size, and at least ``min_copies``."""
    need = -(-3 * l2 // max(1, weight_bytes))
    return max(min_copies, min(max_copies, need))


def events_ms(fn: Callable[[], object], reps: int = 5, rounds: int = 7, warmup: int = 1) -> float:
    """Milliseconds per call of ``fn`` on the current stream: ``warmup`` calls, then ``rounds``
    times ``reps`` calls queued between two CUDA events; the median round over ``reps``.

    Eager, for calls long enough that launching them costs nothing (a 1 GiB copy: captured in
    a CUDA graph, a copy becomes a memcpy node, which the H100 ran at 2.43 TB/s against 3.0
    TB/s eagerly), and for graph replays (:func:`sequence_ms`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def sequence_ms(calls: list[Callable[[], object]], reps: int = 20, rounds: int = 7) -> float:
    """Milliseconds per call of ``calls`` run back to back in one CUDA graph, no L2 flush.

    The graph runs every call once, in order; ``reps`` replays are queued between two CUDA
    events (the replays' launch latency overlaps the previous replay), ``rounds`` such
    measurements, median, divided by ``len(calls)``. Each call should read its own weights
    (see :func:`copies_for`), else L2 serves the repeats.
    """
    graph = capture_graph(lambda: [c() for c in calls])
    try:
        return events_ms(graph.replay, reps, rounds, warmup=3) / len(calls)
    finally:
        del graph
