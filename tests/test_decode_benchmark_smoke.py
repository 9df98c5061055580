"""Smoke tests of benchmarks/decode.py: a tiny random Llama on the CPU, eager compilers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
META_KEYS = {"device", "torch", "triton", "transformers", "cuda", "python", "dtype", "smoke",
             "copy_bandwidth_Bps", "args", "dense", "was", "timing", "started", "elapsed_s",
             "errors"}  # fmt: skip
ROW_KEYS = {"model", "layers", "batch", "variant", "sparsity", "schedule_sparsity",
            "measured_sparsity", "measured_union_sparsity", "ms_per_token", "tok_per_s",
            "speedup", "byte_limit", "ideal", "fraction_of_ideal", "compile_s", "peak_gib",
            "peak_vs_dense", "dense_ms_per_token", "dense_linear_ms", "site_bytes",
            "lm_head_bytes", "sparse_weight_bytes", "copy_bandwidth_Bps", "rewritten_sites",
            "recompiles_while_timing", "cudagraph_skips", "agree_with_dense"}  # fmt: skip
SITES = 14  # 2 layers x (q, k, v, o, gate, up, down)


def run_smoke(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--smoke", "--out", str(out),
         *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_rows(doc: dict, sparsities: list[float], batches: list[int]) -> None:
    assert META_KEYS <= set(doc["meta"]) and doc["meta"]["smoke"]
    assert doc["meta"]["errors"] == []
    rows = doc["rows"]
    assert len(rows) == len(batches) * (1 + len(sparsities))
    for b in batches:
        mine = [r for r in rows if r["batch"] == b]
        assert [r["variant"] for r in mine].count("dense") == 1
        assert sorted(r["sparsity"] for r in mine if r["variant"] == "was") == sparsities
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["model"] == "tiny-llama" and r["layers"] == 2
        for key in ("ms_per_token", "tok_per_s", "speedup", "ideal", "compile_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["tok_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ms_per_token"])
        assert r["speedup"] == pytest.approx(r["dense_ms_per_token"] / r["ms_per_token"])
        assert r["recompiles_while_timing"] == 0
        assert r["peak_gib"] is None  # no CUDA memory on the CPU
        s = r["sparsity"]
        assert abs(r["measured_sparsity"] - s) < 0.1
        assert r["measured_union_sparsity"] <= r["measured_sparsity"] + 1e-9
        if r["batch"] == 1:
            assert r["measured_union_sparsity"] == pytest.approx(r["measured_sparsity"])
        if r["variant"] == "dense":
            assert s == 0.0 and r["byte_limit"] == 1.0 and r["rewritten_sites"] is None
        else:
            assert r["rewritten_sites"] == (SITES if s > 0 else 0)
            assert r["byte_limit"] >= 1.0 and (s == 0 or r["byte_limit"] > 1.0)
            kept = 1 - r["measured_union_sparsity"]
            assert r["sparse_weight_bytes"] == pytest.approx(
                kept * r["site_bytes"] + r["lm_head_bytes"]
            )
        if s == 0.0:
            assert r["agree_with_dense"] == 1.0


def test_decode_benchmark_smoke(tmp_path):
    """Two sparsities, batch 1: the whole script path in ~15-40 s on a 2-core CPU."""
    out = tmp_path / "decode.json"
    proc = run_smoke(out, "--sparsities", "0", "0.5")
    check_rows(json.loads(out.read_text()), [0.0, 0.5], [1])
    assert "speedup" in proc.stdout and f"wrote {out}" in proc.stdout


@pytest.mark.slow  # ~60-150 s on a shared 2-core CPU
def test_decode_benchmark_smoke_default_sparsities_batches_and_merge(tmp_path):
    """The default sparsities at batches 1 and 2, then a second run merged into the file."""
    out = tmp_path / "decode.json"
    run_smoke(out, "--batch", "1", "2")
    doc = json.loads(out.read_text())
    check_rows(doc, [0.0, 0.25, 0.4, 0.5, 0.6, 0.7], [1, 2])
    union = [r["measured_union_sparsity"] for r in doc["rows"] if r["batch"] == 2]
    assert max(union) < 0.6  # the union of two rows' kept channels is denser
    run_smoke(out, "--merge", "--sparsities", "0.5", "--batch", "1")
    merged = json.loads(out.read_text())
    assert len(merged["rows"]) == len(doc["rows"])  # re-measured rows replaced, others kept
    assert len(merged["meta"]["previous_runs"]) == 1
    assert merged["meta"]["args"]["sparsities"] == [0.5]
