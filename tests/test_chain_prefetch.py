"""passes/chain_prefetch.py: every sparse call but the last gets the next call's weight to
prefetch into L2, with the byte count the option allows, and no output changes."""

import pytest
import torch
from tiny_models import batches, tiny_model

import was_compile
from was_compile.backend import last_compile_stats, prepare
from was_compile.errors import WasError
from was_compile.passes import chain_prefetch as cp


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama")
    cal = was_compile.calibrate(model, batches(4, seq=24, batch=8, seed=1), progress=False)
    return model, cal


def _graph_calls(captured: list):
    """The sparse calls of the last graph the backend rewrote, in order."""
    gm = captured[-1]
    return gm, [n for n in gm.graph.nodes if cp._is_sparse_call(n)]


@pytest.mark.parametrize("mb", [0.001, 1000.0])
def test_calls_are_chained_to_the_next_weight(llama, monkeypatch, mb):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    prepare(model, schedule)
    captured = []
    real = cp.chain_prefetch

    def spy(gm, limit):
        out = real(gm, limit)
        captured.append(gm)
        return out

    monkeypatch.setattr("was_compile.backend.chain_prefetch", spy)
    ids = batches(1, seq=9, batch=1, seed=3)[0]
    with torch.no_grad():
        ref = torch.compile(model, backend="was", options={"schedule": schedule,
                                                           "compiler": "eager"})(ids).logits
        torch._dynamo.reset()
        out = torch.compile(model, backend="was", options={
            "schedule": schedule, "compiler": "eager", "prefetch_mb": mb})(ids).logits  # fmt: skip
    torch._dynamo.reset()
    gm, calls = _graph_calls(captured)
    assert len(calls) >= 4 and last_compile_stats()["prefetching"] == len(calls) - 1
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for cur, nxt in zip(calls, calls[1:]):
        w = cur.kwargs["prefetch"]
        assert w is nxt.args[1] and order[w] < order[cur]
        size = getattr(gm, w.target).numel() * getattr(gm, w.target).element_size()
        want = min(int(mb * 1e6), size)
        assert cur.kwargs["prefetch_bytes"] == want - want % 128
    assert "prefetch" not in calls[-1].kwargs
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_zero_changes_nothing_and_bad_values_are_refused(llama):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    prepare(model, schedule)
    ids = batches(1, seq=9, batch=1, seed=4)[0]
    with torch.no_grad():
        torch.compile(model, backend="was", options={"schedule": schedule,
                                                     "compiler": "eager"})(ids)  # fmt: skip
    torch._dynamo.reset()
    assert last_compile_stats()["prefetching"] == 0
    for bad in (-1.0, 5000.0):
        with pytest.raises(WasError, match="prefetch_mb must be in 0..1024"):
            was_compile.options.WasOptions.parse({"schedule": schedule, "prefetch_mb": bad})
