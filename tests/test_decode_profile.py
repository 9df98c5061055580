"""benchmarks/decode_profile.py: the per-step figures it takes from a Chrome trace."""

import json

import pytest
from bench_modules import load_benchmark


@pytest.fixture(scope="module")
def profile():
    return load_benchmark("decode_profile")


def test_families(profile):
    assert profile.family("_sparse_gemv_kernel") == "was GEMV"
    assert profile.family("_splitk_reduce_kernel") == "was split-K reduction"
    assert profile.family("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_TNT") == "cuBLAS"
    assert profile.family("void cublasLt::splitKreduce_kernel<32, 16>") == "cuBLAS"
    assert profile.family("triton_poi_fused_mul_silu_8") == "Inductor fused"
    assert profile.family("cudnn_generated_fort_native_sdpa_sm80_flash_fprop") == "attention"
    assert profile.family("Memcpy DtoD (Device -> Device)") == "copies"
    assert profile.family("some_kernel") == "other"


def test_summarize_span_busy_gaps_per_step(profile, tmp_path):
    ev = [  # two steps; overlapping kernels count once in busy; CPU ops are ignored
        {"cat": "kernel", "name": "_sparse_gemv_kernel", "ts": 100.0, "dur": 10.0},
        {"cat": "kernel", "name": "_splitk_reduce_kernel", "ts": 112.0, "dur": 2.0},
        {"cat": "kernel", "name": "triton_poi_fused_add", "ts": 113.0, "dur": 3.0},  # overlaps
        {"cat": "gpu_memcpy", "name": "Memcpy DtoD", "ts": 120.0, "dur": 1.0},
        {"cat": "kernel", "name": "_sparse_gemv_kernel", "ts": 130.0, "dur": 10.0},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 500.0},
    ]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": ev}))
    r = profile.summarize(str(trace), steps=2)
    assert r["span_us"] == pytest.approx((140 - 100) / 2)
    assert r["busy_us"] == pytest.approx((10 + 4 + 1 + 10) / 2)  # [112, 116) once
    assert r["gaps_us"] == pytest.approx((40 - 25) / 2)
    assert r["kernels_per_step"] == pytest.approx(2.5)
    assert r["families"]["was GEMV"] == {"per_step": 1.0, "us": 10.0}
    assert r["families"]["copies"]["us"] == pytest.approx(0.5)
    assert r["top"][0]["name"] == "_sparse_gemv_kernel" and r["top"][0]["us"] == 10.0


def test_summarize_empty_trace(profile, tmp_path):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": []}))
    r = profile.summarize(str(trace), steps=4)
    assert r["kernels_per_step"] == 0 and r["span_us"] == 0.0


def test_smoke_run_writes_json(profile, tmp_path):
    out = tmp_path / "p.json"
    assert profile.main(["--smoke", "--steps", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"meta", "dense", "was"} and doc["meta"]["steps"] == 2
