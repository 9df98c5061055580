"""benchmarks/score_ablation.py --smoke: the script runs end to end on a tiny random model."""

import json

import torch
from bench_modules import load_benchmark


def test_score_ablation_smoke(tmp_path):
    mod = load_benchmark("score_ablation")
    out = tmp_path / "ablation.json"
    argv = ["--smoke", "--out", str(out), "--sparsities", "0.5", "--threads", "1",
            "--calib-windows", "4", "--eval-windows", "4"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert mod.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # main sets it for its process; keep the suite's
    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] and len(doc["rows"]) == 3
    scores = {r["score"] for r in doc["rows"]}
    assert scores == {"magnitude (teal-uniform)", "was L1 (was-uniform)", "was L2"}
    for r in doc["rows"]:
        assert r["ppl"] > 1 and abs(r["achieved_sparsity"] - 0.5) < 0.1
