"""The backend on every family: dense at sparsity 0, equal to a hook-masked eager reference at
sparsity 0.5, and the measured sparsity on held-out inputs close to the target."""

import pytest
import torch
from tiny_models import FAMILIES, N_LAYERS, batches, tiny_model

import was_compile
from was_compile.backend import last_compile_stats
from was_compile.schedules.refine import refine_schedule

FP32 = dict(rtol=1e-4, atol=1e-5)


def _compile(model, schedule, **opts):
    return torch.compile(
        model, backend="was", options={"schedule": schedule, "compiler": "eager", **opts}
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_family(family):
    model = tiny_model(family)
    sites = was_compile.find_sites(model)
    calib = batches(16, seq=24, batch=16, seed=1)
    held = batches(8, seq=24, batch=16, seed=7)
    cal = was_compile.calibrate(model, calib, sites=sites, progress=False)
    ids = held[0][:2]
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits

        # Sparsity 0: the plain dense linears, nothing rewritten.
        out0 = _compile(model, was_compile.make_schedule(cal, 0.0))(ids, use_cache=False).logits
        torch.testing.assert_close(out0, dense, **FP32)
        assert last_compile_stats()["rewritten"] == 0

        # The sparse op with thresholds that keep every channel equals dense.
        torch._dynamo.reset()
        schedule = refine_schedule(model, was_compile.make_schedule(cal, 0.5), calib)
        keep_all = was_compile.Schedule(
            schedule.sites, schedule.sparsity,
            {n: torch.full_like(t, -1.0) for n, t in schedule.thresholds.items()},
        )  # fmt: skip
        was_compile.backend.prepare(model, keep_all)  # weights laid out: one trace, no retrace
        compiled = _compile(model, keep_all, prefill="sparse")
        out = compiled(ids, use_cache=False).logits
        stats = last_compile_stats()
        assert stats["rewritten"] == len(sites) and not stats["relaid"]
        # every block's act(gate) * up (act(fc1)) is written by the gate|up (fc1) kernel;
        # GPT-2's tanh GELU is spelled out in elementary ops and is left as it is
        assert stats["activations"] == (0 if family == "gpt2" else N_LAYERS)
        torch.testing.assert_close(out, dense, **FP32)

        # Sparsity 0.5, swapped in without recompiling, equals a hook-masked eager reference.
        assert keep_all.update_(schedule) == len(sites)
        for ids_ in (ids, held[1][:1, :7]):
            out = compiled(ids_, use_cache=False).logits
            with was_compile.masked_inputs(model, schedule.thresholds):
                ref = model(ids_, use_cache=False).logits
            torch.testing.assert_close(out, ref, **FP32)
        assert (out - model(held[1][:1, :7], use_cache=False).logits).abs().max() > 1e-3

    measured = was_compile.measured_sparsity(model, schedule.thresholds, held)
    assert set(measured) == {s.name for s in sites}
    for name, frac in measured.items():
        assert abs(frac - 0.5) <= 0.02, (name, frac)
