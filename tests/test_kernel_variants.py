"""The probe kernels of ``benchmarks/kernel_variants/`` that ``triton.language`` can express
(kernel_notes sections 23-24) under the Triton CPU interpreter, against the float64
reference: their H100 timings are on record, so each must compute what the package's kernel
computes. (The Gluon probes do not run in the interpreter; their GPU runs check their errors.)

* ``fullk_narrow.py``: no split-K, each one-warp CTA streams all of K (masked, two steps in
  flight, or from a per-CTA kept list);
* ``tiled_wide.py``: the wide M = 1 tile over a column-tiled weight, or over [K, N];
* ``tiled_dot.py``: the package's tensor-core loop over a column-tiled weight, or over [K, N].

And ``benchmarks/read_floor.py``'s read kernel, which must read every element it times.
"""

import pytest
import torch
from interpreter_kernels import use_interpreter

use_interpreter()

from bench_modules import load_benchmark  # noqa: E402
from gemv_reference import check, reference  # noqa: E402

read_floor = load_benchmark("read_floor")  # and benchmarks/ on sys.path: kernel_variants
from kernel_variants import fullk_narrow as fullk  # noqa: E402
from kernel_variants import tiled_dot, tiled_wide  # noqa: E402


def _make(k, ends, dtype, seed, thr_scale=1.5, m=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w_t = torch.randn(k, ends[-1], generator=g).to(dtype)
    thr = (torch.rand(len(ends), k, generator=g) * thr_scale).float()
    return x, w_t, thr


FULLK_CASES = [  # (K, segment ends, BLOCK_N, BLOCK_K, COMPACT, PIPE, list block): odd K, segments
    (67, (32,), 32, 16, 0, 1, 512),
    (200, (64, 128), 32, 64, 1, 1, 128),
    (130, (16, 48, 64), 16, 32, 1, 1, 64),
    (130, (128,), 64, 128, 0, 1, 512),
    (100, (32, 64), 32, 16, 0, 2, 512),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", FULLK_CASES)
def test_fullk_matches_reference(dtype, case):
    k, ends, bn, bk, compact, pipe, lb = case
    x, w_t, thr = _make(k, ends, dtype, seed=k + bn)
    y = fullk.fullk_gemv(x, w_t, thr, ends, block_n=bn, block_k=bk, compact=compact,
                         pipe=pipe, list_block=lb)  # fmt: skip
    check(y, reference(x, w_t, thr, ends, None), x, k)


@pytest.mark.parametrize("compact, pipe", [(0, 1), (0, 2), (1, 1)])
@pytest.mark.parametrize("thr_scale", [0.0, 1e9])
def test_fullk_none_and_all_dropped(compact, pipe, thr_scale):
    k, ends = 90, (32, 64)
    x, w_t, thr = _make(k, ends, torch.bfloat16, seed=7, thr_scale=thr_scale)
    thr -= 1.0 if thr_scale == 0.0 else 0.0  # below every |x|: nothing dropped
    y = fullk.fullk_gemv(x, w_t, thr, ends, block_n=32, block_k=32, compact=compact,
                         pipe=pipe, list_block=64)  # fmt: skip
    ref = reference(x, w_t, thr, ends, None)
    check(y, ref, x, k)
    assert (ref == 0).all() == (thr_scale > 0)


def test_fullk_rejects_what_it_cannot_run():
    x, w_t, thr = _make(64, (48,), torch.float32, seed=1)
    with pytest.raises(ValueError, match="multiples of 32"):
        fullk.fullk_gemv(x, w_t, thr, (48,), block_n=32)
    with pytest.raises(ValueError, match="M = 1"):
        fullk.fullk_gemv(torch.cat([x, x]), w_t, thr, (48,), block_n=16)


TILED_CASES = [  # (K, segment ends, BLOCK_K, K_ITERS): odd K, 1-3 segments, one K split or several
    (100, (256,), 8, 4),
    (300, (256, 512), 16, 2),
    (64, (256, 512, 768), 8, 8),
    (70, (512,), 8, 16),
]


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", TILED_CASES)
def test_tiled_matches_reference(case, dtype, tiled):
    k, ends, bk, k_iters = case
    x, w_t, thr = _make(k, ends, dtype, seed=k)
    ref = reference(x, w_t, thr, ends, None)
    for _ in range(2):  # the second call finds the split-K workspace left zeroed
        y = tiled_wide.tiled_gemv(x, w_t, thr, ends, block_k=bk, k_iters=k_iters, tiled=tiled)
        check(y, ref, x, k)


def test_tile_weight_layout_and_fresh_tensors():
    w = torch.arange(4 * 512, dtype=torch.float32).reshape(4, 512).to(torch.bfloat16)
    t = tiled_wide.tile_weight(w)
    assert t.shape == (2, 4, 256) and torch.equal(t[1, 3], w[3, 256:])
    x, w1, thr = _make(64, (512,), torch.bfloat16, seed=3)
    tiled_wide.tiled_gemv(x, w1, thr, (512,), block_k=8, k_iters=2)
    # another tensor at the same address with other values (as when a freed weight's memory
    # goes to the next one of that shape): it must not get w1's tiled copy
    w1.copy_(torch.randn(64, 512))
    w2 = w1.view(64, 512)
    assert w2.data_ptr() == w1.data_ptr() and w2 is not w1
    y = tiled_wide.tiled_gemv(x, w2, thr, (512,), block_k=8, k_iters=2)
    check(y, reference(x, w2, thr, (512,), None), x, 64)


def test_tiled_rejects_what_it_cannot_run():
    x, w_t, thr = _make(64, (300,), torch.bfloat16, seed=1)
    with pytest.raises(ValueError, match="multiples of 256"):
        tiled_wide.tiled_gemv(x, w_t, thr, (300,))


DOT_CASES = [  # (M, K, segment ends, BLOCK_N, BLOCK_K, K_ITERS): odd K, 1-3 segments
    (8, 100, (64,), 32, 16, 2),
    (5, 130, (64, 96, 128), 32, 32, 1),
    (16, 64, (128,), 64, 16, 4),
]


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", DOT_CASES)
def test_tiled_dot_matches_reference(case, dtype, tiled):
    m, k, ends, bn, bk, k_iters = case
    x, w_t, thr = _make(k, ends, dtype, seed=k + m, m=m)
    y = tiled_dot.tiled_dot_gemv(x, w_t, thr, ends, block_n=bn, block_k=bk, k_iters=k_iters,
                                 tiled=tiled)  # fmt: skip
    check(y, reference(x, w_t, thr, ends, None), x, k)


@pytest.mark.parametrize("n, block, iters", [(5000, 1024, 2), (4096, 1024, 4), (300, 256, 1)])
def test_read_floor_kernel_folds_every_element(n, block, iters):
    g = torch.Generator().manual_seed(n)
    src = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32)
    out = torch.zeros(64, dtype=torch.int32)
    read_floor.read_once(src, out, block, iters, 4)
    per_cta = block * iters
    ctas = -(-n // per_cta)
    for c in range(ctas):
        want = 0
        for v in src[c * per_cta : (c + 1) * per_cta].tolist():
            want ^= v
        assert out[c].item() == want, c
