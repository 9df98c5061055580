"""The probe kernel ``benchmarks/kernel_variants/tiled_wide.py`` (kernel_notes section 24)
under the Triton CPU interpreter, against the float64 reference, in both layouts: its H100
timings are on record, so it must compute what the package's kernel computes."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "a CUDA device is present: run this module alone with TRITON_INTERPRET=1",
        allow_module_level=True,
    )
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot run")

from gemv_reference import check, reference  # noqa: E402

VARIANT = Path(__file__).resolve().parents[1] / "benchmarks/kernel_variants/tiled_wide.py"
_spec = importlib.util.spec_from_file_location("tiled_wide", VARIANT)
tiled_wide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiled_wide)
if type(tiled_wide._tiled_wide_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported without the interpreter earlier in this process",
                allow_module_level=True)  # fmt: skip


def _make(k, ends, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, k, generator=g).to(dtype)
    w_t = torch.randn(k, ends[-1], generator=g).to(dtype)
    thr = (torch.rand(len(ends), k, generator=g) * 1.5).float()
    return x, w_t, thr


CASES = [  # (K, segment ends, BLOCK_K, K_ITERS): odd K, 1-3 segments, one K split or several
    (100, (256,), 8, 4),
    (300, (256, 512), 16, 2),
    (64, (256, 512, 768), 8, 8),
    (70, (512,), 8, 16),
]


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
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
