"""The ``was`` command: show (and plot) a schedule; calibrate and search on a tiny model
saved with a character-level tokenizer; tune without CUDA."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

from was_compile.cli import main, site_shapes
from was_compile.schedules.calibration import Calibration, calibrate
from was_compile.schedules.methods import make_schedule
from was_compile.schedules.schedule_file import Schedule

ROOT = Path(__file__).resolve().parents[1]
PROSE = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such "
    "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
    "minds of the surrounding families, that he is considered the rightful property of some "
    "one or other of their daughters.\n"
)


def char_tokenizer() -> T.PreTrainedTokenizerFast:
    """A character-level tokenizer built offline (vocabulary of 64)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = sorted(set(string.ascii_letters + " .,;:'!?\n-"))
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    T.LlamaForCausalLM(cfg).eval().save_pretrained(d / "model")
    char_tokenizer().save_pretrained(d / "model")
    (d / "train.txt").write_text(PROSE * 8)
    (d / "held_out.txt").write_text(PROSE.upper() * 8)
    return d


@pytest.fixture(scope="module")
def calibration(model_dir) -> tuple[Calibration, Path]:
    model = T.AutoModelForCausalLM.from_pretrained(model_dir / "model").eval()
    g = torch.Generator().manual_seed(0)
    cal = calibrate(model, [torch.randint(2, 64, (2, 32), generator=g)], progress=False)
    cal.save(model_dir / "random_cal.pt")
    return cal, model_dir / "random_cal.pt"


@pytest.fixture(scope="module")
def schedule_dir(model_dir, calibration) -> Path:
    return make_schedule(calibration[0], 0.4, "was-uniform").save(model_dir / "uniform")


def test_show_prints_table_and_meta(schedule_dir, capsys):
    assert main(["show", str(schedule_dir)]) == 0
    out = capsys.readouterr().out
    assert "block" in out and "down" in out and "byte-weighted sparsity: 40.00%" in out
    assert '"method": "was-uniform"' in out


def test_show_plot_writes_png(schedule_dir, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    png = tmp_path / "s.png"
    assert main(["show", str(schedule_dir), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "schedule.json not found" in capsys.readouterr().err


def test_console_entry_point_runs(schedule_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "was_compile.cli", "show", str(schedule_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "byte-weighted sparsity" in res.stdout


def test_search_tpe_needs_eval_text(model_dir, calibration, tmp_path, capsys):
    argv = ["search", str(model_dir / "model"), "--calibration", str(calibration[1])]
    assert main([*argv, "--out", str(tmp_path), "--method", "was-tpe"]) == 2
    assert "--eval-text" in capsys.readouterr().err


def test_calibrate_then_search(model_dir, tmp_path, capsys):
    pytest.importorskip("was_compile.models", reason="was_compile.models not written yet")
    pytest.importorskip("was_compile.data", reason="was_compile.data not written yet")
    model = str(model_dir / "model")
    cal = tmp_path / "cal.pt"
    common = ["--device", "cpu", "--dtype", "float32"]
    argv = ["calibrate", model, "--text", str(model_dir / "train.txt"), "--tokens", "256"]
    assert main([*argv, "--seq-len", "32", "--out", str(cal), *common]) == 0
    c = Calibration.load(cal)
    assert c.data["tokens"] == 256 and c.data["seq_len"] == 32 and c.data["windows"] == 8
    out = tmp_path / "sched"
    argv = ["search", model, "--calibration", str(cal), "--budget", "0.45", "--out", str(out)]
    argv += ["--method", "was-tpe", "--trials", "3", "--eval-text", str(model_dir / "held_out.txt")]
    argv += ["--eval-tokens", "64", "--greedy-tokens", "64", "--base-step", "0.3", *common]
    assert main(argv) == 0
    sched = Schedule.load(out)
    assert abs(sched.achieved_sparsity() - 0.45) < 1e-6
    assert sched.meta["method"] == "was-tpe" and sched.meta["tpe"]["trials"] == 3
    assert sched.meta["tpe"]["delta"] == 0.0  # --delta unset: alpha alone
    assert (out / "greedy-was.json").exists() and (out / "tpe.db").exists()
    capsys.readouterr()
    assert main([*argv[:-2], "--trials", "4", *common]) == 0  # resumes: one more trial
    assert "reusing greedy trajectories" in capsys.readouterr().out
    assert Schedule.load(out).meta["tpe"]["trials"] == 4
    argv = ["search", model, "--calibration", str(cal), "--budget", "0.3", "--out"]
    assert main([*argv, str(tmp_path / "teal"), "--method", "teal", "--base-step", "0.3"]) == 0
    assert Schedule.load(tmp_path / "teal").meta["score"] == "mag"


def test_tune_without_cuda_exits_2(model_dir, capsys):
    pytest.importorskip("was_compile.models", reason="was_compile.models not written yet")
    if torch.cuda.is_available():
        pytest.skip("this test checks the message printed without CUDA")
    assert main(["tune", str(model_dir / "model"), "--dtype", "float32"]) == 2
    captured = capsys.readouterr()
    assert "shapes (N, K)" in captured.out and "CUDA" in captured.err


def test_site_shapes_fuse_groups(calibration):
    shapes, segments = site_shapes(calibration[0].sites)
    assert shapes == [(64, 64), (64, 96), (128, 64), (192, 64)]  # o, down, q|k|v, gate|up
    assert segments[(128, 64)] == [64, 96, 128] and segments[(192, 64)] == [96, 192]
