"""benchmarks/timing.py: the CUDA-graph timing shared by decode.py, kernels.py, tile_probe.py."""

import pytest
import torch
from bench_modules import load_benchmark


def load_timing():
    return load_benchmark("timing")


def test_graph_ms_order_without_a_gpu(monkeypatch):
    """Warm-up on a side stream, then capture, then the timer gets the graph's replay."""
    timing = load_timing()
    events: list[str] = []

    class Stream:
        def wait_stream(self, other):
            events.append("wait")

    class Ctx:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            events.append(f"enter {self.name}")

        def __exit__(self, *exc):
            events.append(f"exit {self.name}")

    class Graph:
        def replay(self):
            events.append("replay")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: Ctx("side"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: Ctx("capture"))

    def timer(fn):
        fn()
        fn()
        return 1.5

    ms = timing.graph_ms(lambda: events.append("fn"), timer)
    assert ms == 1.5
    assert events == ["wait", "enter side", "fn", "exit side", "wait", "enter capture", "fn",
                      "exit capture", "replay", "replay"]  # fmt: skip


@pytest.mark.gpu
def test_graph_ms_replays_on_the_gpu():
    timing = load_timing()
    y = torch.zeros(1024, device="cuda")

    def timer(replay):
        for _ in range(3):
            replay()
        torch.cuda.synchronize()
        return 0.25

    assert timing.graph_ms(lambda: y.add_(1), timer) == 0.25
    assert torch.equal(y, torch.full_like(y, 4))  # one warm-up call + three replays
    src = torch.randn(2**24, device="cuda")
    dst = torch.empty_like(src)
    ms = timing.graph_ms(lambda: dst.copy_(src), timing.do_bench_ms)
    assert 0 < ms < 100 and torch.equal(dst, src)


def test_copy_bandwidth_counts_bytes_read_and_written():
    """The copy the timer times really copies, and bytes read + written over its time."""
    timing = load_timing()
    seen = []

    def timer(fn):
        out = fn()
        seen.append(out.clone())
        return 2.0  # ms

    bw = timing.copy_bandwidth_Bps(torch.device("cpu"), timer, numel=4096)
    assert bw == pytest.approx(2 * 4096 * 2 / 2e-3)
    assert seen[0].dtype == torch.bfloat16 and seen[0].float().abs().sum() > 0


def test_copies_for_fills_three_times_l2():
    timing = load_timing()
    l2 = 50 * 2**20
    assert timing.copies_for(28672 * 4096 * 2, l2) == 4  # Llama-3-8B gate|up: 235 MB > 3 x L2
    assert timing.copies_for(2048 * 2048 * 2, l2) == 19  # 8 MiB: ceil(150 / 8)
    assert timing.copies_for(1000, l2) == 64  # capped
    assert timing.copies_for(10**9, l2, min_copies=2) == 2


class _FakeEvent:
    """CUDA event stand-in: records how many replays/calls had run; 2 ms per replay."""

    clock = [0]

    def __init__(self, enable_timing=False):
        self.at = None

    def record(self):
        self.at = self.clock[0]

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 2.0 * (end.at - self.at)


def test_sequence_ms_runs_every_call_in_order_and_divides_per_call(monkeypatch):
    timing = load_timing()
    order: list[str] = []

    class Graph:
        def __init__(self, fn):
            fn()  # what capture would record

        def replay(self):
            _FakeEvent.clock[0] += 1

    from was_compile.kernels import graph_timing

    monkeypatch.setattr(graph_timing, "capture_graph", Graph)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    calls = [lambda i=i: order.append(f"call{i}") for i in range(3)]
    ms = timing.sequence_ms(calls, reps=5, rounds=3)
    assert order == ["call0", "call1", "call2"]
    assert ms == pytest.approx(2.0 * 5 / (5 * 3))  # 5 replays of 2 ms, 15 calls


def test_events_ms_is_per_call(monkeypatch):
    timing = load_timing()
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)

    def fn():
        _FakeEvent.clock[0] += 3  # 6 ms a call

    assert timing.events_ms(fn, reps=4, rounds=3) == pytest.approx(6.0)


@pytest.mark.gpu
def test_sequence_ms_on_the_gpu():
    timing = load_timing()
    ys = [torch.zeros(1024, device="cuda") for _ in range(3)]
    ms = timing.sequence_ms([lambda y=y: y.add_(1) for y in ys], reps=2, rounds=2)
    assert 0 < ms < 10
    # one warm-up call each (the capture records, does not run), then 3 + 2 x 2 replays
    assert all(torch.equal(y, torch.full_like(y, 8)) for y in ys)
