"""The probe kernel ``benchmarks/kernel_variants/fullk_narrow.py`` (kernel_notes section 23)
under the Triton CPU interpreter, against the float64 reference: its H100 timings are on
record, so it must compute the same thing as the package's kernel."""

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

VARIANT = Path(__file__).resolve().parents[1] / "benchmarks/kernel_variants/fullk_narrow.py"
_spec = importlib.util.spec_from_file_location("fullk_narrow", VARIANT)
fullk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fullk)
if type(fullk._fullk_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported without the interpreter earlier in this process",
                allow_module_level=True)  # fmt: skip


def _make(k, ends, dtype, seed, thr_scale=1.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, k, generator=g).to(dtype)
    w_t = torch.randn(k, ends[-1], generator=g).to(dtype)
    thr = (torch.rand(len(ends), k, generator=g) * thr_scale).float()
    return x, w_t, thr


CASES = [  # (K, segment ends, BLOCK_N, BLOCK_K, COMPACT, PIPE, list block): odd K, segments
    (67, (32,), 32, 16, 0, 1, 512),
    (200, (64, 128), 32, 64, 1, 1, 128),
    (130, (16, 48, 64), 16, 32, 1, 1, 64),
    (130, (128,), 64, 128, 0, 1, 512),
    (100, (32, 64), 32, 16, 0, 2, 512),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
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
