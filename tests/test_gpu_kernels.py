"""The sparse GEMV and the op on a CUDA GPU: real and odd shapes, every dtype, every config the
autotuner may pick, CUDA-graph capture and the backend end to end.

Marked ``gpu`` and left out of the default run (CI has no GPU); on a GPU machine:
``python -m pytest -m gpu tests/test_gpu_kernels.py``. Without CUDA every test here fails
loudly rather than skipping: asking for the GPU tests on a machine without one is an error.
References are float64 from the same rounded inputs; tolerances as in the interpreter tests
(rtol, atol scaled by sqrt(K)). Outputs are poisoned before each call: the allocator's free
memory is filled with NaN, so an element the kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from gemv_reference import TOL, check, check_activation, reference

pytestmark = pytest.mark.gpu

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DEV = "cuda"


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "the gpu-marked tests need a CUDA device"


def _gemv(reduction: str = "atomic"):
    """sparse_gemv with its split-K workspace reserved first (as the backend does at compile
    time) when ``reduction`` is atomic; ordered runs the second reduction kernel."""
    from was_compile.kernels.triton_sparse_gemv import reserve_workspace_for, sparse_gemv

    def call(x, w_t, thr, ends, b=None, **kw):
        if reduction == "atomic":
            reserve_workspace_for(w_t, ends, x.shape[0])
        return sparse_gemv(x, w_t, thr, ends, b, reduction=reduction, **kw)

    return call


def _workspace_is_zero() -> bool:
    from was_compile.kernels.splitk import _WORKSPACES

    acc, tickets = _WORKSPACES[torch.device(DEV, torch.cuda.current_device())]
    return not acc.any().item() and not tickets.any().item()


def _poison_free_memory(nbytes: int = 1 << 26) -> None:
    """Fill a block of the caching allocator with NaN and free it: the next torch.empty of a
    smaller size lands in NaN, so an unwritten output element cannot pass as a value."""
    torch.empty(nbytes // 4, dtype=torch.float32, device=DEV).fill_(float("nan"))


def _make(m, k, ends, dtype, seed, sparsity=0.5, bias=True):
    g = torch.Generator(device=DEV).manual_seed(seed)
    n = ends[-1]
    x = torch.randn(m, k, generator=g, device=DEV) * torch.rand(k, generator=g, device=DEV) * 3
    x = x.to(dtype)
    w_t = (torch.randn(k, n, generator=g, device=DEV) / math.sqrt(k)).to(dtype)
    # per-segment thresholds at the quantile of |x| (first row) that drops `sparsity`,
    # jittered per channel so segments differ
    base = torch.quantile(x[0].abs().float(), sparsity) if sparsity > 0 else torch.tensor(-1.0)
    jitter = 0.5 + torch.rand(len(ends), k, generator=g, device=DEV)
    thr = (base.to(DEV) * jitter).float().contiguous()
    b = torch.randn(n, generator=g, device=DEV).to(dtype) if bias else None
    return x, w_t, thr, b


# (K, segment_ends): Llama-3-8B q|k|v and down, Qwen2.5-7B q|k|v with its bias, odd shapes
SHAPES = [
    (4096, [4096, 5120, 6144]),
    (14336, [4096]),
    (3584, [3584, 4096, 4608]),
    (1000, [333, 700, 1101]),
    (4097, [4103]),
]


@pytest.mark.parametrize("reduction", ["atomic", "ordered"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 16])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_matches_reference(dtype, m, shape, reduction, monkeypatch):
    """The first-ranked config of every key (WAS_AUTOTUNE=0: no timing runs), both split-K
    reductions; the atomic one leaves its workspace zeroed."""
    monkeypatch.setenv("WAS_AUTOTUNE", "0")
    k, ends = SHAPES[shape]
    x, w_t, thr, b = _make(m, k, ends, dtype, seed=100 * shape + m, bias=shape % 2 == 0)
    _poison_free_memory()
    y = _gemv(reduction)(x, w_t, thr, ends, b, sparsity_hint=0.5)
    check(y, reference(x, w_t, thr, ends, b), x, k)
    if reduction == "atomic":
        assert _workspace_is_zero()


def test_atomic_reduction_in_cuda_graph(monkeypatch):
    """Calls captured in one CUDA graph with the atomic reduction: every replay, on fresh x,
    matches the reference and leaves the workspace zeroed. A capture that finds no reserved
    workspace falls back to the ordered reduction (correct, not an error)."""
    from was_compile.kernels import splitk
    from was_compile.kernels.triton_sparse_gemv import reserve_workspace_for, sparse_gemv

    k, ends = 4096, [14336, 28672]
    x, w_t, thr, b = _make(1, k, ends, torch.bfloat16, seed=21, sparsity=0.5, bias=False)
    for reserved in (True, False):
        if reserved:
            reserve_workspace_for(w_t, ends, 1)
        else:
            monkeypatch.setattr(splitk, "_WORKSPACES", {})
        sparse_gemv(x, w_t, thr, ends, sparsity_hint=0.5)  # tunes outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ys = [sparse_gemv(x, w_t, thr, ends, sparsity_hint=0.5) for _ in range(3)]
        for seed in (1, 2):
            g = torch.Generator(device=DEV).manual_seed(seed)
            x.copy_(torch.randn(x.shape, generator=g, device=DEV).to(x.dtype) * 2)
            graph.replay()
            torch.cuda.synchronize()
            for y in ys:
                check(y, reference(x, w_t, thr, ends, None), x, k)
        if reserved:
            assert _workspace_is_zero()
        else:
            assert not splitk._WORKSPACES  # nothing allocated inside the capture


@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("shape", [3, 4])
def test_autotuned_matches_reference(m, shape):
    """Whatever config the autotuner picks (it times up to 12) computes the same function."""
    k, ends = SHAPES[shape]
    x, w_t, thr, b = _make(m, k, ends, torch.bfloat16, seed=7 * shape + m, sparsity=0.6)
    y = _gemv()(x, w_t, thr, ends, b, sparsity_hint=0.6)
    x, w_t, thr, b = _make(m, k, ends, torch.bfloat16, seed=9 * shape + m, sparsity=0.6)
    _poison_free_memory()  # a second call with fresh inputs runs the tuned config
    y = _gemv()(x, w_t, thr, ends, b, sparsity_hint=0.6)
    check(y, reference(x, w_t, thr, ends, b), x, k)


def test_tuner_times_every_candidate_and_caches_the_fastest(tmp_path, monkeypatch):
    """First call of a key: every candidate timed the way decode runs (sequence over weight
    copies), the fastest stored on disk and launched; its result matches the reference."""
    from was_compile.kernels import gemv_tuner
    from was_compile.kernels import triton_sparse_gemv as tsg
    from was_compile.kernels.autotune_configs import REGISTER_CAPS

    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("WAS_AUTOTUNE", "1")  # this test is the tuner's, whatever the run says
    monkeypatch.setattr(gemv_tuner, "_MEMO", {})
    monkeypatch.setattr(gemv_tuner, "_LOADED", set())
    monkeypatch.setattr(tsg, "_CHOSEN", {})
    k, ends = SHAPES[0]
    x, w_t, thr, b = _make(1, k, ends, torch.bfloat16, seed=5, sparsity=0.5)
    mem0 = torch.cuda.memory_allocated()
    y = _gemv()(x, w_t, thr, ends, b, sparsity_hint=0.5)
    (entry,) = json.loads(gemv_tuner.cache_path().read_text()).values()
    timed = [t["us"] for t in entry["timed"] if t["us"] is not None]
    assert len(timed) >= 2 and entry["us"] == min(timed) and 1 < entry["us"] < 1000
    assert tsg.last_autotune_config() == entry["config"]
    # M = 1 picks a wide tile: each register cap was then timed on it too
    caps = {t["config"].get("maxnreg") for t in entry["timed"]}
    assert set(REGISTER_CAPS) <= caps
    check(y, reference(x, w_t, thr, ends, b), x, k)
    assert torch.cuda.memory_allocated() - mem0 < w_t.nbytes  # the weight copies are freed


@pytest.mark.parametrize("mb", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("sb", [0, 2, 3, 4])
def test_every_candidate_config(mb, sb):
    """Every config the pruner may hand the autotuner for a Llama-3-8B gate|up and an odd
    shape, run explicitly (so a wrong config cannot hide behind a faster right one), three
    calls each on fresh inputs: a call that left the atomic reduction's workspace dirty
    spoils the next one (a race of this kind once showed only on the call after tuning)."""
    from was_compile.kernels.autotune_configs import candidate_configs

    for k, ends in [(4096, [14336, 28672]), (1000, [333, 700, 1101])]:
        for i, cfg in enumerate(candidate_configs(tuple(ends), k, mb, sb, 2)):
            kw = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            m = max(1, mb - i % 2)  # both the bucket's top and one row fewer
            for call in range(3):
                x, w_t, thr, b = _make(m, k, ends, torch.bfloat16, seed=10 * i + call,
                                       sparsity=0.25 * sb)  # fmt: skip
                _poison_free_memory()
                y = _gemv()(x, w_t, thr, ends, b, config=kw)
                try:
                    check(y, reference(x, w_t, thr, ends, b), x, k)
                except AssertionError as e:
                    raise AssertionError(
                        f"config {kw}, M={m}, K={k}, ends={ends}, call {call}: {e}"
                    ) from None
            assert _workspace_is_zero(), kw


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_and_none_dropped(dtype):
    k, ends = 1000, [333, 700, 1101]
    x, w_t, _, b = _make(5, k, ends, dtype, seed=7)
    gemv = _gemv()
    inf = torch.full((3, k), float("inf"), device=DEV)
    assert torch.equal(gemv(x, w_t, inf, ends, b), b.expand(5, -1))
    keep_all = torch.full((3, k), -1.0, device=DEV)
    check(gemv(x, w_t, keep_all, ends, b), reference(x, w_t, keep_all, ends, b), x, k)


def test_op_under_cuda_graphs_and_changing_rows():
    """torch.ops.was.sparse_linear compiled with mode="reduce-overhead": decode of 1 and 3
    rows (sparse kernel) and a 40-row prefill (dense path) all match the float64 reference
    semantics, with no recompile between decode lengths of one bucket."""
    import was_compile.kernels.ops  # noqa: F401 - registers the op

    k, ends = 4096, [4096, 5120, 6144]
    _, w_t, thr, b = _make(1, k, ends, torch.bfloat16, seed=3)
    hint = 0.5

    def f(x):
        return torch.ops.was.sparse_linear(x, w_t, thr, ends, b, False, 16, hint)

    cf = torch.compile(f, mode="reduce-overhead", dynamic=True)
    for rows in (1, 1, 3, 1, 40, 3):
        g = torch.Generator(device=DEV).manual_seed(rows)
        x = torch.randn(rows, k, generator=g, device=DEV).to(torch.bfloat16)
        y = cf(x).clone()
        if rows <= 16:
            ref = reference(x, w_t, thr, ends, b)
        else:  # prefill="dense": the unmasked linear
            ref = x.double() @ w_t.double() + b.double()
        check(y, ref, x, k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 4, 8])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_output_activation(act, m, dtype, monkeypatch):
    """act(gate) * up written by the gate|up GEMV's epilogue (Llama-3-8B's gate|up, an odd
    fused gate_up), tuned and replayed in a CUDA graph on fresh inputs, against the float64
    activation of the float64 y within y's tolerance carried through the activation."""
    from was_compile.kernels.output_activation import OutputActivation
    from was_compile.kernels.triton_sparse_gemv import sparse_gemv

    monkeypatch.setenv("WAS_AUTOTUNE", "0")  # the pruner's first config: no tuning per case
    for k, ends, gate_first in [(4096, [14336, 28672], True), (1000, [666], False)]:
        oa = OutputActivation(act, True, gate_first)
        x, w_t, thr, b = _make(m, k, ends, dtype, seed=m + k, sparsity=0.5)
        _poison_free_memory()
        h = _gemv()(x, w_t, thr, ends, b, sparsity_hint=0.5, activation=oa)
        check_activation(h, x, reference(x, w_t, thr, ends, b), oa, ends, k)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # workspace reserved and config tuned by the call above
            h = sparse_gemv(x, w_t, thr, ends, b, sparsity_hint=0.5, activation=oa)
        x.copy_(_make(m, k, ends, dtype, seed=m + k + 1, sparsity=0.5)[0])
        graph.replay()
        check_activation(h, x, reference(x, w_t, thr, ends, b), oa, ends, k)
        assert _workspace_is_zero()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backend_on_cuda_matches_hook_reference(dtype):
    """A tiny Llama on the GPU compiled with backend="was" at 50%: each decode step's logits
    equal the eager model with the same inputs masked by hooks."""
    import transformers

    from was_compile import calibrate, make_schedule, masked_inputs
    from was_compile.backend import last_compile_stats

    cfg = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(DEV, dtype).eval()
    batches = [torch.randint(0, 512, (2, 64), device=DEV) for _ in range(2)]
    schedule = make_schedule(calibrate(model, batches, progress=False), 0.5)
    compiled = torch.compile(model, backend="was", options={"schedule": schedule})
    tau = {name: t.to(DEV) for name, t in schedule.thresholds.items()}
    ids = torch.randint(0, 512, (1, 1), device=DEV)
    with torch.no_grad():
        got = compiled(ids).logits.double()
        assert last_compile_stats()["activations"] == 2  # act(gate) * up by the gate|up kernel
        with masked_inputs(model, tau):
            want = model(ids).logits.double()
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=rtol * 4, atol=atol * math.sqrt(704) * 4)


def test_op_follows_measured_switch_point(tmp_path, monkeypatch):
    """Rows above the measured switch point run the masked dense path, not the kernel."""
    import was_compile.kernels.ops as ops
    from was_compile.kernels import switch_points

    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    switch_points._cached_table.cache_clear()
    k, ends = 1000, [333, 700, 1101]
    _, w_t, thr, b = _make(1, k, ends, torch.bfloat16, seed=5)
    rows = [{"K": k, "segment_ends": ends, "sparsity_bucket": 3, "M": m, "time_us": t,
             "prefill_us": 10.0} for m, t in ((1, 5.0), (2, 5.0), (4, 20.0))]  # fmt: skip
    switch_points.record(rows, torch.cuda.get_device_name(), torch.bfloat16)
    calls = []
    real = ops._triton_gemv()
    monkeypatch.setattr(
        ops, "_triton_gemv", lambda: lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    for m, kernel in ((2, True), (3, False), (16, False)):
        x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
        calls.clear()
        y = torch.ops.was.sparse_linear(x, w_t, thr, ends, b, False, 16, 0.6)
        assert bool(calls) == kernel, f"M={m}"
        check(y, reference(x, w_t, thr, ends, b), x, k)
    switch_points._cached_table.cache_clear()


def test_tune_shapes_times_and_records_switch_points(tmp_path, monkeypatch):
    """was tune's timing run on a small grouped shape: every row timed, the table written."""
    from was_compile.kernels import switch_points
    from was_compile.kernels.tuning import tune_shapes

    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    switch_points._cached_table.cache_clear()
    ends = [96, 160]
    rows = tune_shapes([(160, 200)], torch.bfloat16, m_values=(1, 3), sparsities=(0.5,),
                       segments={(160, 200): ends})  # fmt: skip
    assert len(rows) == 2 * 2  # (M 1, 3) x (sparsity 0.5 with its hint, and without one)
    for r in rows:
        assert r["segment_ends"] == ends and r["config"] != "?"
        assert 0 < r["time_us"] < 1e4 and 0 < r["cublas_us"] < 1e4 and 0 < r["prefill_us"] < 1e4
    table = json.loads((tmp_path / "switch_points.json").read_text())
    assert len(table) == 2 and all(v in (0, 1, 3) for v in table.values())  # buckets 0.5, None
    switch_points._cached_table.cache_clear()
