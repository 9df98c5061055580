"""benchmarks/summarize.py copies figures from the committed JSON results into its tables."""

import json
from pathlib import Path

import pytest
from bench_modules import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _summarize():
    return load_benchmark("summarize")


@pytest.mark.parametrize("name", ["kernels", "decode", "quality", "quality_dense_prompt"])
def test_tables_quote_the_json(name, capsys, tmp_path):
    data = json.loads((RESULTS / f"{name}.json").read_text())
    out = tmp_path / "summary.md"
    assert _summarize().main(["--only", name, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip() == out.read_text().strip()
    assert data["meta"]["device"] in text
    if name == "kernels":
        rows = [r for r in data["rows"] if r["model"] == "Llama-3-8B" and r["M"] == 1]
        for r in rows:
            assert f"{r['speedup_vs_cublas']:.2f}x / {r['fraction_of_limit']:.0%}" in text
        assert text.count("PASS") + text.count("FAIL") == 4
    elif name == "decode":
        for r in data["rows"]:
            assert (
                f"| {r['ms_per_token']:.2f} | {r['tok_per_s']:.0f} | {r['speedup']:.2f}x |" in text
            )
    else:
        for r in data["rows"]:
            assert f"{r['ppl']:.1f} ({r['achieved_sparsity']:.1%})" in text
        n_targets = sum(len(v) for v in data["meta"]["targets"].values())
        assert text.count("PASS: ") + text.count("FAIL: ") == n_targets
