"""Smoke test of benchmarks/quality.py: a tiny random Llama, a short text, 2 sparsities."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"teal-uniform", "teal", "was-uniform", "was-greedy", "was-tpe"}


@pytest.mark.slow  # ~40-80 s on a shared 2-core CPU
def test_quality_benchmark_smoke(tmp_path):
    env = {**os.environ, "WAS_CACHE_DIR": str(tmp_path / "was_cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--out",
         str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "quality.json").read_text())
    assert (tmp_path / "quality.png").is_file()
    meta = doc["meta"]
    assert meta["smoke"] and meta["torch"] and meta["transformers"] and meta["device"]
    assert meta["tpe"]["trials"] == 3 and meta["tpe"]["delta"] == 0.0  # the default
    ((key, info),) = doc["models"].items()
    assert math.isfinite(info["dense_ppl"]) and info["dense_ppl"] > 1
    assert info["data"]["eval"]["tokens"] > 0 and info["data"]["calib"]["tokens"] > 0
    rows = doc["rows"]
    assert {r["method"] for r in rows} == METHODS
    assert sorted({r["sparsity"] for r in rows}) == [0.4, 0.6]
    assert len(rows) == 10
    for r in rows:
        assert r["model"] == key
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1
        assert abs(r["nominal_sparsity"] - r["sparsity"]) < 1e-6
        assert 0.0 < r["achieved_sparsity"] < 1.0
        assert abs(r["achieved_sparsity"] - r["sparsity"]) < 0.15
        assert r["ppl_increase"] == pytest.approx(r["ppl"] - info["dense_ppl"])
        if r["method"] == "was-tpe":
            assert r["trials"] == 3 and r["search_s"] > 0
    assert set(meta["targets"][key][0]) >= {"sparsity", "status"}
    assert "targets:" in proc.stdout and "was-tpe" in proc.stdout


def test_quality_benchmark_device_errors():
    """A device torch cannot use stops the run at once, saying what to do instead."""
    import torch

    cases = [(["--device", "not-a-device"], "is not a torch device"),
             (["--device", "meta"], "only cpu and cuda devices")]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "sees no CUDA GPU; run on the CPU"))
    for args, says in cases:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-2000:]
