"""Backend behaviour: errors that say what to do, dense sites, memory, decode with a KV cache,
dynamic shapes, hot-swapped schedules, and the entry point."""

import importlib.metadata

import pytest
import torch
from tiny_models import batches, tiny_model

import was_compile
from was_compile.backend import last_compile_stats, prepare
from was_compile.hf_cache import cache_kwargs, returned_cache
from was_compile.options import WasOptions


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama")
    cal = was_compile.calibrate(model, batches(4, seq=24, batch=8, seed=1), progress=False)
    return model, cal


def _compile(model, schedule, **opts):
    return torch.compile(
        model, backend="was", options={"schedule": schedule, "compiler": "eager", **opts}
    )


def test_entry_point_registers_the_backend():
    eps = importlib.metadata.entry_points(group="torch_dynamo_backends")
    assert [ep.value for ep in eps if ep.name == "was"] == ["was_compile.backend:was_backend"]
    assert "was" in torch._dynamo.list_backends(exclude_tags=())


def test_missing_schedule_says_how_to_make_one(llama):
    model, _ = llama
    with pytest.raises(Exception, match="needs a schedule.*make_schedule"):
        with torch.no_grad():
            torch.compile(model, backend="was")(torch.ones(1, 4, dtype=torch.long))


def test_schedule_of_another_model_is_refused(llama):
    model, _ = llama
    other = tiny_model("gpt2")
    cal = was_compile.calibrate(other, batches(1, seq=8, seed=2), progress=False)
    with pytest.raises(Exception, match="does not fit this model.*model.layers.0.self_attn.q_proj"):
        with torch.no_grad():
            _compile(model, was_compile.make_schedule(cal, 0.5))(torch.ones(1, 4, dtype=torch.long))


def test_schedule_with_other_shapes_names_the_site(llama):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    name = schedule.sites[0].name
    wrong = [
        was_compile.Site(s.name, s.kind, s.block, s.group, s.in_features,
                         s.out_features + (s.name == name), s.weight_layout)
        for s in schedule.sites
    ]  # fmt: skip
    bad = was_compile.Schedule(wrong, schedule.sparsity, schedule.thresholds)
    with pytest.raises(Exception, match=f"site {name} is 40->40 in the model but 40->41"):
        with torch.no_grad():
            _compile(model, bad)(torch.ones(1, 4, dtype=torch.long))


def test_gradients_are_refused(llama):
    model, cal = llama
    compiled = _compile(model, was_compile.make_schedule(cal, 0.5))
    with pytest.raises(Exception, match="inference-only"):
        compiled(torch.ones(1, 4, dtype=torch.long))


def test_unknown_option_values_are_refused(llama):
    model, cal = llama
    with pytest.raises(Exception, match="prefill must be 'dense' or 'sparse'"):
        with torch.no_grad():
            _compile(model, was_compile.make_schedule(cal, 0.5), prefill="maybe")(
                torch.ones(1, 4, dtype=torch.long)
            )


def test_options_parse_mode_and_inductor_keys(llama):
    _, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    opts = WasOptions.parse({"schedule": schedule, "mode": "reduce-overhead", "max_autotune": 1})
    assert opts.mode == "reduce-overhead" and opts.inductor_config == {"max_autotune": 1}
    with pytest.raises(was_compile.WasError, match="max_decode_rows must be in 1..16"):
        WasOptions.parse({"schedule": schedule, "max_decode_rows": 64})


def test_sparsity_zero_sites_run_dense(llama):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    downs = [s.name for s in schedule.sites if s.kind == "down"]
    for n in downs:
        schedule.sparsity[n] = 0.0
        schedule.thresholds[n] = torch.zeros_like(schedule.thresholds[n])
    prepare(model, schedule)
    ids = batches(1, seq=9, batch=1, seed=5)[0]
    with torch.no_grad():
        out = _compile(model, schedule, prefill="sparse")(ids, use_cache=False).logits
        sparse_only = {n: t for n, t in schedule.thresholds.items() if n not in downs}
        with was_compile.masked_inputs(model, sparse_only):
            ref = model(ids, use_cache=False).logits
    assert last_compile_stats()["rewritten"] == len(schedule.sites) - len(downs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_weights_are_stored_once(llama):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)

    def storage_bytes():
        seen = {}
        for p in model.parameters():
            seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        return sum(seen.values())

    before = storage_bytes()
    compiled = _compile(model, schedule)
    with torch.no_grad():
        for _ in range(2):
            compiled(torch.ones(1, 5, dtype=torch.long), use_cache=False)
    assert last_compile_stats()["rewritten"] == len(schedule.sites)
    assert storage_bytes() == before  # re-laid out in place, no second copy
    q = model.get_submodule(schedule.sites[0].name).weight
    k = model.get_submodule(schedule.sites[1].name).weight
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()  # one q|k|v tensor
    assert q.stride() == (1, sum(s.out_features for s in schedule.sites[:3]))


def test_decode_with_kv_cache_is_sparse_and_does_not_recompile_per_step(llama):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    prepare(model, schedule)
    compiled = _compile(model, schedule)  # prefill dense (default), decode sparse
    prompt = batches(1, seq=24, batch=1, seed=8)[0]  # > max_decode_rows: a dense prefill

    def run(step_fn):
        logits, out = [], step_fn(prompt, None)
        past = returned_cache(out)
        logits.append(out.logits[:, -1])
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(6):
            out = step_fn(tok, past)
            past = returned_cache(out)
            logits.append(out.logits[:, -1])
            tok = out.logits[:, -1:].argmax(-1)
        return logits

    graphs = []

    def compiled_step(ids, past):
        out = compiled(ids, **cache_kwargs(model, past), use_cache=True)
        graphs.append(last_compile_stats()["graphs"])
        return out

    def reference_step(ids, past):
        if ids.shape[1] > 1:  # prefill: dense
            return model(ids, **cache_kwargs(model, past), use_cache=True)
        with was_compile.masked_inputs(model, schedule.thresholds):
            return model(ids, **cache_kwargs(model, past), use_cache=True)

    with torch.no_grad():
        got, want = run(compiled_step), run(reference_step)
        dense_steps = run(lambda ids, past: model(ids, **cache_kwargs(model, past), use_cache=True))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0], dense_steps[0], rtol=1e-4, atol=1e-5)  # dense prefill
    assert (got[-1] - dense_steps[-1]).abs().max() > 1e-3  # sparse decode
    assert graphs[-1] == graphs[3], f"recompiled while decoding: {graphs}"


def test_schedule_round_trips_bit_for_bit(llama, tmp_path):
    _, cal = llama
    schedule = was_compile.make_schedule(cal, 0.4)
    loaded = was_compile.Schedule.load(schedule.save(tmp_path / "s"))
    assert loaded.sites == schedule.sites and loaded.sparsity == schedule.sparsity
    assert loaded.meta == schedule.meta
    for n, t in schedule.thresholds.items():
        assert torch.equal(loaded.thresholds[n], t)
    with pytest.raises(FileNotFoundError, match="schedule.json"):
        was_compile.Schedule.load(tmp_path / "nothing")


def test_schedule_from_a_folder_path(llama, tmp_path):
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    prepare(model, schedule)
    ids = batches(1, seq=6, batch=1, seed=3)[0]
    with torch.no_grad():
        a = _compile(model, str(schedule.save(tmp_path / "s")), prefill="sparse")(ids).logits
        with was_compile.masked_inputs(model, schedule.thresholds):
            b = model(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inductor_dynamic_shapes(llama):
    """The real path: Inductor, prefill and decode lengths without a recompile per length."""
    model, cal = llama
    schedule = was_compile.make_schedule(cal, 0.5)
    prepare(model, schedule)
    compiled = torch.compile(model, backend="was", options={"schedule": schedule,
                                                            "prefill": "sparse"})  # fmt: skip
    with torch.no_grad():
        for n in (7, 11, 13, 17):
            ids = batches(1, seq=n, batch=1, seed=n)[0]
            out = compiled(ids, use_cache=False).logits
            if n == 11:
                graphs = last_compile_stats()["graphs"]
            with was_compile.masked_inputs(model, schedule.thresholds):
                ref = model(ids, use_cache=False).logits
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert last_compile_stats()["graphs"] == graphs
    assert last_compile_stats()["rewritten"] == len(schedule.sites)
