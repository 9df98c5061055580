"""The probe kernel ``benchmarks/kernel_variants/tiled_dot.py`` (kernel_notes section 24):
the package's tensor-core loop over a column-tiled weight, under the Triton CPU interpreter,
against the float64 reference, in both layouts."""

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

VARIANT = Path(__file__).resolve().parents[1] / "benchmarks/kernel_variants/tiled_dot.py"
_spec = importlib.util.spec_from_file_location("tiled_dot", VARIANT)
tiled_dot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiled_dot)
if type(tiled_dot._tiled_dot_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported without the interpreter earlier in this process",
                allow_module_level=True)  # fmt: skip

CASES = [  # (M, K, segment ends, BLOCK_N, BLOCK_K, K_ITERS): odd K, 1-3 segments
    (8, 100, (64,), 32, 16, 2),
    (5, 130, (64, 96, 128), 32, 32, 1),
    (16, 64, (128,), 64, 16, 4),
]


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_tiled_dot_matches_reference(case, dtype, tiled):
    m, k, ends, bn, bk, k_iters = case
    g = torch.Generator().manual_seed(k + m)
    x = torch.randn(m, k, generator=g).to(dtype)
    w_t = torch.randn(k, ends[-1], generator=g).to(dtype)
    thr = (torch.rand(len(ends), k, generator=g) * 1.5).float()
    y = tiled_dot.tiled_dot_gemv(x, w_t, thr, ends, block_n=bn, block_k=bk, k_iters=k_iters,
                                 tiled=tiled)  # fmt: skip
    check(y, reference(x, w_t, thr, ends, None), x, k)
