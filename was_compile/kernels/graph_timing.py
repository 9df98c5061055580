"""Timing GPU calls the way decode runs them: back to back in one CUDA graph, each call on its
own copy of the weights, no cache flush.

A decode step replays one CUDA graph in which every linear reads weights no other call reads,
right after a small kernel that wrote a few KB: the weights always come from HBM, and L2 holds
nothing dirty. Timing one call per replay after a memset flush (``triton.testing.do_bench``)
charges every call the write-back of the dirty L2 lines the memset leaves (12-19 us on an H100,
cuBLAS's calls and ours alike; ``benchmarks/kernel_notes.md`` section 9). So ``was tune``
(switch points) and ``benchmarks/kernels.py`` time a list of calls, one per weight copy,
captured back to back (:func:`sequence_ms`), with enough copies that none finds its weights in
L2 (:func:`copies_for`). The autotuner, which can only call one kernel on one set of arguments,
times each call after reading (not writing) twice the L2 size (:func:`evicted_ms`): the
operands come from HBM and nothing dirty is left to write back, as in decode.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

__all__ = ["capture_graph", "l2_bytes", "copies_for", "events_ms", "sequence_ms", "evicted_ms"]

# per device: a buffer of twice the L2 size, read (summed) before each call evicted_ms times
_EVICTION_BUFFERS: dict = {}


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


def evicted_ms(
    fn: Callable[[], object],
    quantiles: tuple | list | None = None,
    warmup_ms: float = 5.0,
    rep_ms: float = 25.0,
) -> float | list[float]:
    """Milliseconds of one call of ``fn``, each call timed alone (CUDA events) right after a
    kernel that reads twice the L2 size of clean data: ``fn``'s operands are evicted to HBM and
    L2 holds nothing dirty (``triton.testing.do_bench`` instead memsets 256 MB, and the timed
    call pays for writing it back). ``warmup_ms`` / ``rep_ms``: time spent warming up and
    measuring (at least 5 measured calls). Returns the median, or the ``quantiles``.

    The signature of ``triton.testing.do_bench`` where the autotuner uses it."""
    device = torch.cuda.current_device()
    buf = _EVICTION_BUFFERS.get(device)
    if buf is None:
        buf = torch.ones(2 * l2_bytes(torch.device("cuda", device)) // 4, device="cuda")
        _EVICTION_BUFFERS[device] = buf
    sink = torch.empty((), device="cuda")

    def evict():
        torch.sum(buf, dim=0, out=sink)

    fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        evict()
        fn()
    end.record()
    end.synchronize()
    per_call = max(start.elapsed_time(end) / 5, 1e-3)  # ms, eviction included
    for _ in range(max(1, int(warmup_ms / per_call))):
        evict()
        fn()
    n = max(5, int(rep_ms / per_call))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s_ev, e_ev in zip(starts, ends, strict=True):
        evict()
        s_ev.record()
        fn()
        e_ev.record()
    torch.cuda.synchronize()
    times = torch.tensor([s_ev.elapsed_time(e_ev) for s_ev, e_ev in zip(starts, ends, strict=True)])
    if quantiles is None:
        return float(times.median())
    return torch.quantile(times, torch.tensor(list(quantiles))).tolist()
