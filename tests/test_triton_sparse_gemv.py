"""Correctness of the threshold-sparse GEMV kernel under the Triton CPU interpreter.

Every case compares with a float64 reference computed from the same (already rounded) inputs.
Shapes are small (<= 512): the interpreter runs each program instance in numpy.
"""

import pytest
import torch
from interpreter_kernels import use_interpreter

use_interpreter()

from gemv_reference import check, reference  # noqa: E402

from was_compile.kernels import autotune_configs as ac  # noqa: E402
from was_compile.kernels import splitk  # noqa: E402
from was_compile.kernels import triton_sparse_gemv as tsg  # noqa: E402

sparse_gemv = tsg.sparse_gemv


# explicit configs that cover the paths the GPU autotuner can pick (the interpreter's own
# autotune list is a single config)
FMA_CFG = {"BLOCK_N": 64, "BLOCK_K": 16, "K_ITERS": 3, "USE_DOT": 0}
DOT_CFG = {"BLOCK_N": 32, "BLOCK_K": 32, "K_ITERS": 2, "USE_DOT": 1}
# COMPACT: each CTA first lists its chunk's kept channels, then reads BLOCK_K kept rows a step
FMA_C_CFG = {"BLOCK_N": 32, "BLOCK_K": 16, "K_ITERS": 4, "USE_DOT": 0, "COMPACT": 1}
DOT_C_CFG = {"BLOCK_N": 64, "BLOCK_K": 16, "K_ITERS": 4, "USE_DOT": 1, "COMPACT": 1}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _make(m, k, ends, dtype, seed, bias=True, thr_scale=1.5):
    g = _gen(seed)
    n = ends[-1]
    x = torch.randn(m, k, generator=g).to(dtype)
    w_t = torch.randn(k, n, generator=g).to(dtype)
    thr = (torch.rand(len(ends), k, generator=g) * thr_scale).float()
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return x, w_t, thr, b


CASES = [  # (M, K, segment_ends)
    (1, 67, [45]),
    (3, 130, [17, 26, 35]),
    (16, 130, [257]),
    (2, 96, [64, 80, 112]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_reference(dtype, case):
    m, k, ends = CASES[case]
    x, w_t, thr, b = _make(m, k, ends, dtype, seed=10 + case, bias=case % 2 == 0)
    y = sparse_gemv(x, w_t, thr, ends, b)
    check(y, reference(x, w_t, thr, ends, b), x, k)


@pytest.mark.parametrize(
    "m,cfg,dtype",
    [
        (1, DOT_CFG, torch.float32),
        (2, FMA_CFG, torch.bfloat16),
        (4, FMA_CFG, torch.float16),
        (3, DOT_CFG, torch.bfloat16),
        (8, DOT_CFG, torch.float16),
        (16, DOT_CFG, torch.bfloat16),
        (1, FMA_C_CFG, torch.bfloat16),
        (4, FMA_C_CFG, torch.float32),
        (2, DOT_C_CFG, torch.float16),
        (16, DOT_C_CFG, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("reduction", ["atomic", "ordered"])
def test_explicit_configs(m, cfg, dtype, reduction):
    """K = 100 in chunks of 32..64 rows: 2-4 split-K parts per column tile, summed either way
    (splitk.py); the atomic way leaves its workspace zeroed for the next call."""
    k, ends = 100, [40, 57, 99]
    x, w_t, thr, b = _make(m, k, ends, dtype, seed=m, bias=True)
    y = sparse_gemv(x, w_t, thr, ends, b, config={**cfg, "num_warps": 4}, reduction=reduction)
    check(y, reference(x, w_t, thr, ends, b), x, k)
    if reduction == "atomic":
        acc, tickets = splitk._WORKSPACES[torch.device("cpu")]
        assert acc.numel() >= m * ends[-1] and not acc.any() and not tickets.any()


def test_atomic_workspace_rules(monkeypatch):
    """The workspace grows and keeps the buffers it replaces (graphs may point at them); on a
    GPU a call never allocates it (None: the ordered reduction runs); a bad mode is an error."""
    monkeypatch.setattr(splitk, "_WORKSPACES", {})
    monkeypatch.setattr(splitk, "_RETIRED", [])
    cpu = torch.device("cpu")
    splitk.reserve_workspace(cpu, 10, 3)
    first = splitk._WORKSPACES[cpu]
    splitk.reserve_workspace(cpu, 5, 2)  # already large enough: unchanged
    assert splitk._WORKSPACES[cpu] is first
    acc, tickets = splitk.atomic_workspace(cpu, 20, 1)  # CPU: grows on demand
    assert acc.numel() == 20 and tickets.numel() == 3 and splitk._RETIRED == [first]
    assert splitk.atomic_workspace(torch.device("cuda", 0), 1, 1) is None
    x, w_t, thr, ends, b = _ok()
    with pytest.raises(ValueError, match="reduction must be one of"):
        sparse_gemv(x, w_t, thr, ends, b, reduction="fast")
    monkeypatch.setenv("WAS_SPLITK_REDUCTION", "fast")
    with pytest.raises(ValueError, match="WAS_SPLITK_REDUCTION='fast' is not one of"):
        sparse_gemv(x, w_t, thr, ends, b)
    monkeypatch.setenv("WAS_SPLITK_REDUCTION", "ordered")
    check(sparse_gemv(x, w_t, thr, ends, b), reference(x, w_t, thr, ends, b), x, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_dropped_gives_bias(dtype):
    ends = [17, 26, 35]
    x, w_t, _, b = _make(3, 67, ends, dtype, seed=3)
    thr = torch.full((3, 67), float("inf"))
    assert torch.equal(sparse_gemv(x, w_t, thr, ends, b), b.expand(3, -1))
    assert torch.equal(sparse_gemv(x, w_t, thr, ends), torch.zeros(3, 35, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_none_dropped_equals_dense(dtype):
    ends = [45, 90]
    x, w_t, _, b = _make(2, 130, ends, dtype, seed=4)
    thr = torch.full((2, 130), -1.0)
    dense = x.double() @ w_t.double() + b.double()
    check(sparse_gemv(x, w_t, thr, ends, b), dense, x, 130)


def test_half_dropped_fraction_and_values():
    # per-channel thresholds at the median of |x| over the channels: row 0 keeps exactly half
    k, ends = 128, [48, 80]
    x, w_t, _, b = _make(1, k, ends, torch.bfloat16, seed=5)
    med = x.float().abs().median()
    thr = torch.full((2, k), med.item())
    thr[:, ::2] = med - 1e-3  # break ties against the median element itself
    kept = (x.float().abs() > thr[0]).float().mean().item()
    assert 0.45 <= kept <= 0.55
    y = sparse_gemv(x, w_t, thr, ends, b)
    ref = reference(x, w_t, thr, ends, b)
    check(y, ref, x, k)
    dense = x.double() @ w_t.double() + b.double()
    assert (ref - dense).abs().max() > 0.5  # the drop changed the answer: the test can fail


def test_dropped_weight_rows_are_never_read():
    # a channel dropped by every row of x (for one segment) has NaN weights in that segment:
    # any load of them would poison the output (0 * NaN = NaN); masked loads give finite y
    m, k, ends = 3, 96, [40, 72]
    x, w_t, thr, b = _make(m, k, ends, torch.float16, seed=6, thr_scale=2.0)
    w_poisoned = w_t.clone()
    start = 0
    n_poisoned = 0
    for s, end in enumerate(ends):
        dropped = ~(x.float().abs() > thr[s]).any(dim=0)
        w_poisoned[dropped, start:end] = float("nan")
        n_poisoned += int(dropped.sum())
        start = end
    assert n_poisoned > 10
    for cfg in (None, FMA_CFG, DOT_CFG, FMA_C_CFG, DOT_C_CFG):
        y = sparse_gemv(x, w_poisoned, thr, ends, b, config=cfg)
        assert torch.isfinite(y).all()
        check(y, reference(x, w_t, thr, ends, b), x, k)


def test_each_row_uses_its_own_mask():
    # row 0 keeps only even channels, row 1 only odd ones: the union reads every weight row,
    # but each row must multiply its own channels only
    k, ends = 64, [48]
    g = _gen(7)
    x = torch.rand(2, k, generator=g) + 0.5  # |x| in [0.5, 1.5)
    x[0, 1::2] = 0.1
    x[1, 0::2] = -0.1
    w_t = torch.randn(k, 48, generator=g)
    thr = torch.full((1, k), 0.2)
    y = sparse_gemv(x, w_t, thr, ends)
    check(y, reference(x, w_t, thr, ends, None), x, k)
    assert torch.allclose(y[0].double(), x[0, 0::2].double() @ w_t[0::2].double(), atol=1e-4)


def test_deterministic_and_strided_x():
    k, ends = 80, [33, 50]
    x, w_t, thr, b = _make(4, k, ends, torch.float32, seed=8)
    big = torch.zeros(4, 2 * k)
    big[:, ::2] = x
    y1 = sparse_gemv(x, w_t, thr, ends, b)
    y2 = sparse_gemv(big[:, ::2], w_t, thr, ends, b, sparsity_hint=0.5)  # non-unit stride
    assert torch.equal(y1, y2)


# ---------------------------------------------------------------- validation


def _ok(m=2, k=32, ends=(16, 32), dtype=torch.float16):
    x, w_t, thr, b = _make(m, k, list(ends), dtype, seed=0)
    return x, w_t, thr, list(ends), b


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: {**a, "x": torch.randn(17, 32).half()}, r"M = x\.shape\[0\] must be in 1\.\.16"),
        (lambda a: {**a, "x": a["x"].double()}, "dtype torch.float64 is not supported"),
        (lambda a: {**a, "x": a["x"][0]}, "x must be 2-D"),
        (lambda a: {**a, "w": a["w"].float()}, "weight_t dtype"),
        (lambda a: {**a, "w": a["w"].t().contiguous().t()}, "weight_t must be contiguous"),
        (lambda a: {**a, "w": a["w"][:31]}, "weight_t must be"),
        (lambda a: {**a, "thr": a["thr"][:1]}, r"thresholds shape must be \[S, K\]"),
        (lambda a: {**a, "thr": a["thr"].double()}, "thresholds must be float32"),
        (lambda a: {**a, "thr": 0.5}, "thresholds must be a torch.Tensor"),
        (lambda a: {**a, "ends": [16, 16]}, "strictly increasing"),
        (lambda a: {**a, "ends": [16, 31]}, r"segment_ends\[-1\] must equal N"),
        (lambda a: {**a, "ends": []}, "segment_ends is empty"),
        (
            lambda a: {
                **a,
                "ends": list(range(4, 37, 4)),
                "w": torch.randn(32, 36).half(),
                "thr": torch.rand(9, 32),
            },
            "at most 8 segments",
        ),
        (lambda a: {**a, "ends": torch.tensor([16, 32])}, "not a tensor"),
        (lambda a: {**a, "b": torch.randn(31).half()}, r"bias must be \[N\]"),
        (lambda a: {**a, "b": torch.randn(32, device="meta")}, "one device"),
    ],
)
def test_validation_errors(mutate, match):
    x, w_t, thr, ends, b = _ok()
    a = mutate({"x": x, "w": w_t, "thr": thr, "ends": ends, "b": b})
    with pytest.raises(ValueError, match=match):
        sparse_gemv(a["x"], a["w"], a["thr"], a["ends"], a["b"])


def test_bad_hint_and_config():
    x, w_t, thr, ends, b = _ok()
    with pytest.raises(ValueError, match="sparsity hint"):
        sparse_gemv(x, w_t, thr, ends, b, sparsity_hint=1.5)
    with pytest.raises(ValueError, match="config is missing"):
        sparse_gemv(x, w_t, thr, ends, b, config={"BLOCK_N": 32})
    with pytest.raises(ValueError, match="powers of 2"):
        sparse_gemv(x, w_t, thr, ends, b, config={**FMA_C_CFG, "K_ITERS": 3})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_tune_shapes_needs_cuda():
    from was_compile.kernels.tuning import tune_shapes

    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        tune_shapes([(64, 64)], torch.bfloat16)


# ---------------------------------------------------------------- config generation


def test_buckets():
    assert [ac.m_bucket(m) for m in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError):
        ac.m_bucket(17)
    assert [ac.sparsity_bucket(s) for s in (None, 0.0, 0.3, 0.5, 0.74, 0.9, 1.0)] == [
        0, 1, 2, 3, 3, 4, 4,
    ]  # fmt: skip


def test_gpu_config_space():
    configs = ac.get_autotune_configs(interpret=False)
    assert len(configs) > 20 and len(ac.get_autotune_configs()) == 1  # one under the interpreter
    for c in configs:
        assert c.kwargs["BLOCK_N"] * 2 >= 128  # >= 128 bytes per row segment in bf16
        assert c.pre_hook is None
    # Llama-3-8B q|k|v, M = 1: the pruner keeps a handful that fill 132 SMs
    ends = (4096, 5120, 6144)
    kept = ac._prune_cached(tuple(configs), ends, 4096, 1, 1, 2, 132)  # M = 1, < 25% sparse
    assert 1 <= len(kept) <= ac.MAX_CANDIDATES
    warps = [
        ac.column_tiles(ends, c.kwargs["BLOCK_N"]) * ac.num_k_splits(4096, c.kwargs) * c.num_warps
        for c in kept
    ]
    in_range = [4 * 132 <= w <= 64 * 132 for w in warps]  # warps launched
    assert in_range[0] and sum(in_range) >= len(kept) // 2  # those that fill the SMs first
    assert in_range == sorted(in_range, reverse=True)
    for c in kept:  # M = 1, 2: only the wide FMA tiles (they won every shape on the H100)
        assert not c.kwargs["USE_DOT"] and not c.kwargs["COMPACT"] and c.kwargs["WIDE"] == 1
    # M = 4: wide tiles only with BLOCK_K <= 8 (x rows held per lane); M = 8: none
    kept4 = ac._prune_cached(tuple(configs), ends, 4096, 4, 3, 2, 132)
    assert all(c.kwargs["BLOCK_K"] <= 8 for c in kept4 if c.kwargs.get("WIDE", 0))
    kept8 = ac._prune_cached(tuple(configs), ends, 4096, 8, 3, 2, 132)
    assert not any(c.kwargs.get("WIDE", 0) for c in kept8)
    # high sparsity: the compacting variant competes with the masked one
    kept_sparse = ac._prune_cached(tuple(configs), ends, 4096, 1, 4, 2, 132)
    assert {c.kwargs["COMPACT"] for c in kept_sparse} == {0, 1}
    kept16 = ac._prune_cached(tuple(configs), ends, 4096, 16, 3, 2, 132)
    assert all(c.kwargs["USE_DOT"] for c in kept16)


def test_tuned_call_times_the_candidates_and_runs_the_fastest(tmp_path, monkeypatch):
    """The tuning path of sparse_gemv with two interpreter-sized candidates and a fake timer
    that runs each candidate's calls (one per weight copy) before scoring it: the faster
    one is launched, the result matches the reference, a second call times nothing."""
    from was_compile.kernels import gemv_tuner

    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gemv_tuner, "_MEMO", {})
    monkeypatch.setattr(gemv_tuner, "_LOADED", set())
    monkeypatch.setattr(gemv_tuner, "l2_bytes", lambda device: 2_000)
    monkeypatch.setattr(tsg, "_CHOSEN", {})
    cands = [{**FMA_CFG, "num_warps": 4}, {**WIDE_CFGS[0]}]
    monkeypatch.setattr(tsg, "candidate_configs", lambda *a: cands)
    timed = []

    def timer(calls_for):
        def time_ms(cfg):
            calls = calls_for(cfg)
            assert len(calls) == 2  # weight 4320 B: it and one copy cover 3 x 2000 B
            for c in calls:
                c()
            timed.append((cfg["BLOCK_N"], cfg.get("maxnreg")))
            return 1.0 if cfg.get("WIDE") else 2.0

        return time_ms

    monkeypatch.setattr(tsg, "sequence_timer", timer)
    k, ends = 45, [16, 48]
    x, w_t, thr, b = _make(2, k, ends, torch.bfloat16, seed=81)
    y = sparse_gemv(x, w_t, thr, ends, b, sparsity_hint=0.5)
    check(y, reference(x, w_t, thr, ends, b), x, k)
    # both candidates, then the wide pick under each register cap (no faster: kept uncapped;
    # the interpreter reports no register count, so no occupancy-step cap)
    expected = [(64, None), (32, None), (32, 96), (32, 128)]
    assert timed == expected and tsg.last_autotune_config() == WIDE_CFGS[0]
    y2 = sparse_gemv(x, w_t, thr, ends, b, sparsity_hint=0.5)  # memoised: nothing timed
    assert timed == expected and torch.equal(y, y2)


# Segment ends: multiples of 16 (fp16/bf16 weights loaded as int32 column pairs by the wide
# path) and odd ones (element loads).
SEG_ENDS = {"aligned": [16, 48], "odd": [9, 26, 37]}


# ---------------------------------------------------------------- WIDE = 1 path (fma_wide.py)

# Wide tiles: each lane holds all BLOCK_K rows of its columns. K_ITERS 1 and > 1 (prefetch of
# the next step), masked and COMPACT, BLOCK_K from 4 to 16, aligned and odd segment ends.
WIDE_CFGS = [
    {"BLOCK_N": 32, "BLOCK_K": 8, "K_ITERS": 3, "USE_DOT": 0, "WIDE": 1, "num_warps": 1},
    {"BLOCK_N": 16, "BLOCK_K": 16, "K_ITERS": 1, "USE_DOT": 0, "WIDE": 1, "num_warps": 2},
    {"BLOCK_N": 32, "BLOCK_K": 4, "K_ITERS": 4, "USE_DOT": 0, "COMPACT": 1, "WIDE": 1},
    {"BLOCK_N": 64, "BLOCK_K": 8, "K_ITERS": 8, "USE_DOT": 0, "COMPACT": 1, "WIDE": 1},
]
WIDE_CASES = [
    (m, dt)
    for m in (1, 2, 3, 4)
    for dt in (torch.float32, torch.float16, torch.bfloat16)
    if (m, dt) not in ((3, torch.float32), (2, torch.float16))
]


@pytest.mark.parametrize("ends", ["aligned", "odd"])
@pytest.mark.parametrize("m,dtype", WIDE_CASES)
def test_wide_matches_reference(m, dtype, ends):
    k, ends_l = 45, SEG_ENDS[ends]
    i = m + (2 if ends == "odd" else 0) + (1 if dtype == torch.bfloat16 else 0)
    cfg = WIDE_CFGS[i % len(WIDE_CFGS)]
    x, w_t, thr, b = _make(m, k, ends_l, dtype, seed=40 + m, bias=m % 2 == 0)
    reduction = ("atomic", "ordered")[i % 2]
    y = sparse_gemv(x, w_t, thr, ends_l, b, config=cfg, reduction=reduction)
    check(y, reference(x, w_t, thr, ends_l, b), x, k)


@pytest.mark.parametrize("cfg", range(len(WIDE_CFGS)))
def test_wide_all_and_none_dropped(cfg):
    k, ends_l = 45, SEG_ENDS["odd" if cfg % 2 else "aligned"]
    dtype = torch.float16 if cfg % 2 else torch.bfloat16
    x, w_t, _, b = _make(4, k, ends_l, dtype, seed=50 + cfg)
    c = WIDE_CFGS[cfg]
    thr = torch.full((len(ends_l), k), float("inf"))
    assert torch.equal(sparse_gemv(x, w_t, thr, ends_l, b, config=c), b.expand(4, -1))
    thr = torch.full((len(ends_l), k), -1.0)
    dense = x.double() @ w_t.double() + b.double()
    check(sparse_gemv(x, w_t, thr, ends_l, b, config=c), dense, x, k)


def test_wide_dropped_rows_never_read_and_own_masks():
    # NaN weights in rows every row of x drops must never be loaded; each row multiplies only
    # its own kept channels (row 0 keeps even channels, row 1 odd ones)
    k, ends = 45, [16, 48]
    g = _gen(11)
    x = (torch.rand(2, k, generator=g) + 0.5).to(torch.bfloat16)
    x[0, 1::2] = 0.1
    x[1, 0::2] = -0.1
    x[:, 5:12] = 0.05  # dropped by both rows
    w_t = torch.randn(k, 48, generator=g).to(torch.bfloat16)
    thr = torch.full((2, k), 0.2)
    w_poisoned = w_t.clone()
    w_poisoned[5:12] = float("nan")
    for cfg in (WIDE_CFGS[0], WIDE_CFGS[2]):
        y = sparse_gemv(x, w_poisoned, thr, ends, config=cfg)
        assert torch.isfinite(y).all()
        check(y, reference(x, w_t, thr, ends, None), x, k)


def test_wide_bad_configs():
    x, w_t, thr, ends, b = _ok()
    with pytest.raises(ValueError, match="WIDE must be 0 or 1"):
        sparse_gemv(x, w_t, thr, ends, b, config={**FMA_CFG, "WIDE": 2})
    with pytest.raises(ValueError, match="WIDE"):
        sparse_gemv(x, w_t, thr, ends, b, config={**FMA_CFG, "WIDE": 1, "USE_DOT": 1})


def test_split_bound_follows_the_reduction():
    """Atomic parts go into an L2 workspace: more K splits are allowed than for the ordered
    reduction's partials (written, then read back). Llama-3.2-1B o (K = N = 2048) at M = 8:
    the ordered rule leaves at most 6 splits, too few CTAs for 132 SMs; the atomic one
    offers configs that launch at least 4 warps per SM."""
    configs = ac._all_configs(False)
    ends, k = (2048,), 2048
    ordered = ac._prune_cached(configs, ends, k, 8, 4, 2, 132, False)
    atomic = ac._prune_cached(configs, ends, k, 8, 4, 2, 132, True)
    for kept, cap, passes in ((ordered, ac.MAX_PARTIAL_OVERHEAD, 2),
                              (atomic, ac.MAX_ATOMIC_OVERHEAD, 1)):  # fmt: skip
        for c in kept:
            splits = ac.num_k_splits(k, c.kwargs)
            assert splits == 1 or splits * 8 * 4 * passes <= cap * k * 2, c
    assert max(ac.num_k_splits(k, c.kwargs) for c in ordered) <= 6

    def warps(c):
        tiles = ac.column_tiles(ends, c.kwargs["BLOCK_N"])
        return tiles * ac.num_k_splits(k, c.kwargs) * c.num_warps

    assert max(warps(c) for c in ordered) < 4 * 132 <= max(warps(c) for c in atomic)
    assert atomic[: len(ordered)] == ordered  # the few-split family first, then the others


def test_every_variant_keeps_its_best_candidates():
    """Llama-3.2-1B q|k|v at M = 2: its 1-warp wide CTAs launch < 4 warps per SM and rank
    behind every dot tile, yet they are the ones that won M = 1-2 on the H100: each variant
    (masked / compacting x dot / wide) still gets its MIN_PER_VARIANT best candidates."""
    configs = ac._all_configs(False)
    kept = ac._prune_cached(configs, (2048, 2560, 3072), 2048, 2, 3, 2, 132)
    assert ac.MAX_CANDIDATES < len(kept) <= 2 * ac.MAX_CANDIDATES  # two families
    for compact in (0, 1):
        for wide in (0, 1):
            n = sum(
                c.kwargs["COMPACT"] == compact and c.kwargs.get("WIDE", 0) == wide for c in kept
            )
            assert n >= ac.MIN_PER_VARIANT, (compact, wide, n)


@pytest.mark.parametrize("mb", [1, 2, 4, 8, 16])
def test_every_candidate_runs_its_bucket(mb):
    """Whatever the shape, the pruner hands the tuner only configs the launcher accepts for
    that M bucket (the dot path needs BLOCK_K >= 16; wide tiles only for M <= 4); small odd K,
    where every split-K rule fails, fell back to a wide tile with BLOCK_K = 8 at M = 16."""
    configs = ac._all_configs(False)
    shapes = [(1000, (333, 700, 1101)), (4096, (14336, 28672)), (64, (96,)), (14336, (4096,))]
    for k, ends in shapes:
        for sb in (0, 1, 3, 4):
            kept = ac._prune_cached(configs, ends, k, mb, sb, 2, 132)
            assert kept
            for c in kept:
                kw = c.kwargs
                if mb > 4 or kw["USE_DOT"]:
                    assert kw["BLOCK_K"] >= 16 and not kw.get("WIDE", 0), (k, ends, mb, kw)
                if mb == 1:
                    assert not kw["USE_DOT"], (k, ends, kw)


def test_wide_weight_at_an_odd_address():
    """A contiguous weight_t view that starts 2 bytes past a 16-byte boundary: the wide path
    must not read its bf16 pairs as int32 (misaligned); the result still matches."""
    k, ends = 45, [16, 48]
    x, w_t, thr, b = _make(2, k, ends, torch.bfloat16, seed=71)
    flat = torch.empty(k * 48 + 1, dtype=torch.bfloat16)
    w_odd = flat[1:].view(k, 48)
    w_odd.copy_(w_t)
    assert w_odd.is_contiguous() and w_odd.data_ptr() % 4 == 2
    assert tsg._segments_aligned(w_t, ends) and not tsg._segments_aligned(w_odd, ends)
    y = sparse_gemv(x, w_odd, thr, ends, b, config=WIDE_CFGS[0])
    check(y, reference(x, w_t, thr, ends, b), x, k)


# Output activation (output_activation.py): act(gate) * up (or act(y)) written by the atomic
# epilogue, on the wide and the COMPACT paths, and computed after the ordered reduction.
ACT_CFGS = [({"BLOCK_N": 256, "BLOCK_K": 16, "K_ITERS": 2, "USE_DOT": 0, "WIDE": 1,
              "num_warps": 1}, "atomic"), (FMA_C_CFG, "atomic"), (FMA_CFG, "ordered")]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "gelu", "relu"])
def test_output_activation_matches_reference(act, dtype):
    from was_compile.kernels.output_activation import OutputActivation, activation_reference

    g = _gen(31 * len(act) + dtype.itemsize)
    k, half = 70, 45  # a half that is no multiple of any BLOCK_N
    modes = [([half, 2 * half], True, True), ([half, 2 * half], True, False),
             ([2 * half], True, True), ([29, 48], False, True)]  # fmt: skip
    for ends, gated, gate_first in modes:
        x = torch.randn(3, k, generator=g).to(dtype)
        w_t = torch.randn(k, ends[-1], generator=g).to(dtype)
        thr = (torch.rand(len(ends), k, generator=g) * 1.5).float()
        b = torch.randn(ends[-1], generator=g).to(dtype)
        oa = OutputActivation(act, gated, gate_first)
        y = reference(x, w_t, thr, ends, b)  # float64
        for cfg, reduction in ACT_CFGS:
            h = sparse_gemv(x, w_t, thr, ends, b, config=cfg, reduction=reduction, activation=oa)
            # the activation of the kernel's own rounded y (checked against float64 above)
            y_k = sparse_gemv(x, w_t, thr, ends, b, config=cfg, reduction=reduction)
            check(y_k, y, x, k)
            want = activation_reference(y_k, oa, ends)
            assert h.shape == (3, half if gated else ends[-1]) and h.dtype == dtype
            rtol = 1e-5 if dtype == torch.float32 else 8e-3
            torch.testing.assert_close(h.double(), want.double(), rtol=rtol, atol=rtol)
    assert splitk._WORKSPACES and not splitk._WORKSPACES[torch.device("cpu")][1].any()


def test_output_activation_errors():
    from was_compile.kernels.output_activation import OutputActivation

    x, w_t, thr = torch.randn(2, 16), torch.randn(16, 30), torch.rand(2, 16)
    with pytest.raises(ValueError, match=r"two segments of equal width.*got segment ends \[10"):
        sparse_gemv(x, w_t, thr, [10, 30], activation=OutputActivation("silu"))
    with pytest.raises(ValueError, match="activation 'swish' is not supported"):
        sparse_gemv(x, w_t, thr, [15, 30], activation=OutputActivation("swish", gated=False))


def test_dot_candidates_hold_the_measured_winners():
    """M buckets 4 and 8 (H100, benchmarks/results/config_sweep/): the fastest configs were
    2-warp dot tiles, a tile's second split count by CTA count, and masked dot tiles the round
    robin had left out, none of which the pruner had offered. Now every masked dot tile's two
    best split counts and the 2-warp tiles are timed at M >= 3 (after the candidates offered
    before), and never at M <= 2."""
    configs = ac._all_configs(False)

    def kept(ends, k, mb):
        return ac._prune_cached(configs, ends, k, mb, 4, 2, 132)

    def keys(cands):
        return {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["K_ITERS"],
                 c.kwargs["COMPACT"], c.num_warps) for c in cands}  # fmt: skip

    qwen_qkv = keys(kept((3584, 4096, 4608), 3584, 8))
    assert (128, 16, 8, 0, 2) in qwen_qkv and (128, 32, 8, 0, 4) in qwen_qkv
    assert (128, 16, 8, 0, 2) in keys(kept((3584,), 3584, 8))  # Qwen2.5-7B o
    assert (64, 64, 1, 0, 2) in keys(kept((2048, 2560, 3072), 2048, 8))  # Llama-3.2-1B q|k|v
    assert (128, 32, 32, 0, 4) in keys(kept((14336, 28672), 4096, 4))  # Llama-3-8B gate|up
    assert (128, 32, 16, 0, 4) in keys(kept((4096,), 14336, 4))  # Llama-3-8B down
    assert (128, 16, 8, 0, 2) in keys(kept((4096,), 4096, 4))  # Llama-3-8B o
    for ends, k in (((2048, 2560, 3072), 2048), ((14336, 28672), 4096), ((4096,), 14336)):
        for mb in (1, 2):
            assert not any(c.kwargs["USE_DOT"] and c.num_warps < 4 for c in kept(ends, k, mb))
        for mb in (4, 8):
            cands = kept(ends, k, mb)
            assert any(c.num_warps < 4 for c in cands) and len(cands) <= 40
