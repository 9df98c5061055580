"""Smoke test of benchmarks/search_cost.py: a tiny random Llama on the CPU, every part."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = {
    "calib8b": ["build", "sites", "calibration", "forward"],
    "greedy8b": ["build", "sites", "calibration", "greedy"],
    "search1b": ["build", "sites", "calibration", "greedy", "tpe", "refinement"],
}
ROW_KEYS = {"part", "model", "shape", "dtype", "smoke", "device", "gpu_total_bytes", "torch",
            "cuda", "triton", "transformers", "optuna", "python", "data", "settings",
            "stages_planned", "stages", "weight_bytes", "parameters", "layers", "n_sites",
            "site_weight_bytes", "finished", "complete", "max_peak_allocated_bytes",
            "max_peak_reserved_bytes", "fits_one_gpu"}  # fmt: skip
STAGE_KEYS = {"stage", "seconds", "wall_seconds", "complete", "allocated_before_bytes",
              "peak_allocated_bytes", "peak_reserved_bytes", "process_max_rss_bytes"}  # fmt: skip
SITES = 14  # 2 layers x (q, k, v, o, gate, up, down)


def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search_cost.py"), "--smoke", "--out",
         str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_row(row: dict) -> None:
    assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
    assert row["smoke"] and row["model"] == "tiny-llama" and row["layers"] == 2
    assert row["n_sites"] == SITES and row["weight_bytes"] > row["site_weight_bytes"] > 0
    assert row["finished"] and "error" not in row
    assert [s["stage"] for s in row["stages"]] == STAGES[row["part"]] == row["stages_planned"]
    for s in row["stages"]:
        assert STAGE_KEYS <= set(s), (s["stage"], STAGE_KEYS - set(s))
        assert math.isfinite(s["seconds"]) and s["seconds"] > 0, s
        assert s["wall_seconds"] >= s["seconds"]
        assert s["peak_allocated_bytes"] is None and s["peak_reserved_bytes"] is None  # no GPU
        assert s["process_max_rss_bytes"] > 0
    assert row["max_peak_allocated_bytes"] is None and row["fits_one_gpu"] is None
    cal = next(s for s in row["stages"] if s["stage"] == "calibration")
    assert cal["calibrate_calls"] >= 1 and cal["call_seconds"] and min(cal["call_seconds"]) > 0
    assert cal["tokens_done"] == cal["seqs_done"] * cal["seq_len"] > 0
    assert cal["histogram_bytes"] == SITES * 2 * 18_002 * 8  # two float64 histograms a site
    assert cal["check_chunked_equals_single_call"] is True


def test_search_cost_smoke(tmp_path):
    """Every part in one run (~20-30 s on a shared 2-core CPU)."""
    out = tmp_path / "search_cost.json"
    proc = run(out)
    doc = json.loads(out.read_text())
    assert [r["part"] for r in doc["rows"]] == list(STAGES)
    assert len(doc["meta"]["runs"]) == 1
    for row in doc["rows"]:
        check_row(row)
        assert row["complete"]
        cal = next(s for s in row["stages"] if s["stage"] == "calibration")
        assert cal["calibrate_calls"] == 2 and cal["seqs_done"] == cal["n_seqs"] == 4
    calib = doc["rows"][0]
    fwd = calib["stages"][-1]
    assert fwd["stage"] == "forward" and fwd["seqs_done"] == 4 and fwd["complete"]
    assert calib["calibration_seconds_per_token"] > 0 and calib["forward_seconds_per_token"] > 0
    assert "histogram_seconds_per_token" in calib
    search = doc["rows"][2]
    stage = {s["stage"]: s for s in search["stages"]}
    assert stage["tpe"]["trials_done"] == stage["tpe"]["trials_requested"] == 3
    assert abs(stage["tpe"]["schedule_sparsity"] - 0.5) < 1e-6
    assert abs(stage["refinement"]["schedule_sparsity"] - 0.5) < 1e-6
    assert stage["refinement"]["mode"] == "sequential"
    assert stage["greedy"]["blocks"] == 2 and stage["greedy"]["steps"] > 0
    assert stage["greedy"]["settings"]["lazy"] is True
    total = sum(stage[s]["seconds"] for s in ("sites", "calibration", "greedy", "tpe",
                                               "refinement"))  # fmt: skip
    assert math.isclose(search["search_seconds"], total)
    assert search["target_seconds"] == 900 and search["meets_target"] is True
    greedy = {s["stage"]: s for s in doc["rows"][1]["stages"]}["greedy"]
    assert greedy["mode"] == "all blocks in one call" and greedy["blocks_done"] == 2
    assert greedy["saved_call_bytes_all_blocks"] == 2 * greedy["saved_call_bytes_per_block"] > 0
    assert "search1b" in proc.stdout and f"wrote {out}" in proc.stdout


def test_search_cost_smoke_budget_and_merge(tmp_path):
    """No time budget: the guards stop after the first calibration call and the first greedy
    block and extrapolate; the row is merged into an existing file, whose other rows stay."""
    out = tmp_path / "search_cost.json"
    other = {"part": "search1b", "model": "kept as it was"}
    out.write_text(json.dumps({"meta": {"runs": [{"parts": ["search1b"]}]}, "rows": [other]}))
    run(out, "--part", "greedy8b", "--budget-s", "0")
    doc = json.loads(out.read_text())
    assert doc["rows"][0] == other and [r["part"] for r in doc["rows"]] == ["search1b", "greedy8b"]
    assert [r["parts"] for r in doc["meta"]["runs"]] == [["search1b"], ["greedy8b"]]
    row = doc["rows"][1]
    check_row(row)
    assert not row["complete"]
    stage = {s["stage"]: s for s in row["stages"]}
    cal = stage["calibration"]
    assert cal["calibrate_calls"] == 1 and cal["seqs_done"] == 2 and not cal["complete"]
    assert math.isclose(cal["extrapolated_seconds"], cal["seconds"] / 2 * 4)
    greedy = stage["greedy"]
    assert greedy["blocks_done"] == 1 and not greedy["complete"]
    assert math.isclose(greedy["extrapolated_seconds"], greedy["seconds"] * 2)
