"""benchmarks/gemv_bytes.py: the kernel benchmarks' fp32 reference and byte count."""

import pytest
import torch
from bench_modules import load_benchmark


def load():
    return load_benchmark("gemv_bytes")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m", [1, 3])
def test_masked_reference_matches_float64_and_counts_union_rows(dtype, m):
    g = torch.Generator().manual_seed(m)
    k, ends = 37, [5, 18, 29]
    x = torch.randn(m, k, generator=g).to(dtype)
    w_t = torch.randn(k, ends[-1], generator=g).to(dtype)
    thr = torch.rand(len(ends), k, generator=g)  # per segment
    ref, kept_bytes, union_kept = load().masked_reference(x, thr, w_t, ends)

    want = torch.empty(m, ends[-1], dtype=torch.float64)
    bytes_, rows_w, start = 0, 0.0, 0
    for s, end in enumerate(ends):
        for j in range(start, end):
            for r in range(m):
                keep = x[r].double().abs() > thr[s].double()
                want[r, j] = (torch.where(keep, x[r].double(), 0.0) * w_t[:, j].double()).sum()
        union = (x.double().abs() > thr[s].double()).any(0).sum().item()
        bytes_ += union * (end - start) * w_t.element_size()
        rows_w += union / k * (end - start)
        start = end
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref.double(), want, rtol=1e-5, atol=1e-5 * k)
    assert kept_bytes == bytes_ and 0 < kept_bytes < k * ends[-1] * w_t.element_size()
    assert union_kept == pytest.approx(rows_w / ends[-1])
