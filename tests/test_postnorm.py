"""Output-norm gains: detected from the model's dataflow (Gemma-2's post-norms, not Llama's
pre-norms), read exactly, folded into the weight-aware column norms, kept by refinement."""

from __future__ import annotations

import pytest
import torch
from tiny_models import batches, tiny_model

import was_compile
from was_compile.schedules.calibration import calibrate
from was_compile.schedules.postnorm import detect_output_gains, norm_gain
from was_compile.schedules.refine import refine_schedule


@pytest.fixture(scope="module")
def gemma2():
    model = tiny_model("gemma2", attn="eager")
    with torch.no_grad():  # gains far from 1, some negative: |1 + w| is the reference
        for name, p in model.named_parameters():
            if "post_" in name:
                p.copy_(torch.randn_like(p) * 3.0)
    return model, was_compile.find_sites(model)


def test_detects_post_norms_only(gemma2):
    model, sites = gemma2
    gains = detect_output_gains(model, sites, batches(1)[0])
    expect = set()
    for i, layer in enumerate(model.model.layers):
        expect |= {f"model.layers.{i}.self_attn.o_proj", f"model.layers.{i}.mlp.down_proj"}
        ref_o = (1.0 + layer.post_attention_layernorm.weight).abs()
        ref_d = (1.0 + layer.post_feedforward_layernorm.weight).abs()
        torch.testing.assert_close(gains[f"model.layers.{i}.self_attn.o_proj"], ref_o)
        torch.testing.assert_close(gains[f"model.layers.{i}.mlp.down_proj"], ref_d)
    assert set(gains) == expect


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gpt_neox", "qwen3"])
def test_no_gains_without_post_norms(family):
    model = tiny_model(family, attn="eager")
    assert detect_output_gains(model, was_compile.find_sites(model), batches(1)[0]) == {}


def test_norm_gain_of_layernorm_and_non_norms():
    ln = torch.nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-2, 3, 8))
        ln.bias.copy_(torch.linspace(1, 2, 8))
    ref = ln.weight.detach().abs()  # up to the eps: 1 / sqrt(1 + 1e-5)
    torch.testing.assert_close(norm_gain(ln, 8, ln.weight), ref, rtol=1e-4, atol=1e-6)
    assert norm_gain(torch.nn.SiLU(), 8, ln.weight) is None  # not scale invariant
    assert norm_gain(torch.nn.Dropout(0.1).eval(), 8, ln.weight) is None


def test_calibration_folds_gains_and_refine_keeps_them(gemma2):
    model, sites = gemma2
    cal = calibrate(model, batches(2), progress=False)
    plain = calibrate(model, batches(2), progress=False, output_gains=False)
    name = "model.layers.1.mlp.down_proj"
    assert name in cal.gains and not plain.gains
    w = model.get_submodule(name).weight.detach()
    g = (1.0 + model.model.layers[1].post_feedforward_layernorm.weight.detach()).abs()
    torch.testing.assert_close(cal.norms[name], (g[:, None] * w).abs().sum(0))
    torch.testing.assert_close(plain.norms[name], w.abs().sum(0))
    q = "model.layers.1.self_attn.q_proj"  # no output norm: the plain column norm
    torch.testing.assert_close(cal.norms[q], plain.norms[q])
    sched = was_compile.make_schedule(cal, 0.5, "was-uniform")
    for mode in ("sequential", "iterative"):
        refined = refine_schedule(model, sched, batches(2), iterations=1, mode=mode)
        prod = refined.thresholds[name].double() * cal.norms[name].double()
        assert prod.std() / prod.mean() < 1e-5, mode  # tau_j * ||g * W[:, j]|| is one scalar
