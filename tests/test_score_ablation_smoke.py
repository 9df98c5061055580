"""benchmarks/score_ablation.py --smoke: the script runs end to end on a tiny random model."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_score_ablation_smoke(tmp_path):
    out = tmp_path / "ablation.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "score_ablation.py"), "--smoke", "--out",
         str(out), "--sparsities", "0.5", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] and len(doc["rows"]) == 3
    scores = {r["score"] for r in doc["rows"]}
    assert scores == {"magnitude (teal-uniform)", "was L1 (was-uniform)", "was L2"}
    for r in doc["rows"]:
        assert r["ppl"] > 1 and abs(r["achieved_sparsity"] - 0.5) < 0.1
