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
    assert doc["meta"]["smoke"] and len(doc["rows"]) == len(mod.SCORES) == 9
    assert {r["score"] for r in doc["rows"]} == set(mod.SCORES)
    for r in doc["rows"]:
        assert r["ppl"] > 1 and abs(r["achieved_sparsity"] - 0.5) < 0.1


def test_weighted_thresholds_with_unit_weights_are_the_magnitude_thresholds():
    """Unit channel weights make the probe's score |x|: its thresholds must be the library
    calibration's magnitude thresholds (same histogram, same quantile)."""
    from tiny_models import batches, tiny_model

    from was_compile import calibrate

    mod = load_benchmark("score_ablation")
    model = tiny_model("llama")
    data = batches(3)
    cal = calibrate(model, data, progress=False)
    ones = {s.name: torch.ones(s.in_features) for s in cal.sites}
    got = mod.weighted_thresholds(model, cal.sites, data, ones, [0.3, 0.6])
    for sp in (0.3, 0.6):
        for s in cal.sites:
            want = cal.channel_thresholds(s.name, sp, "mag")
            torch.testing.assert_close(got[sp][s.name], want, rtol=1e-6, atol=0)


def test_loss_gradient_gains_match_autograd_on_one_site():
    """The RMS loss gradient at a site's output, checked against torch.autograd.grad."""
    from tiny_models import batches, tiny_model

    from was_compile.sites import find_sites

    mod = load_benchmark("score_ablation")
    model = tiny_model("llama").requires_grad_(False)
    data = batches(2, seed=5)
    sites = find_sites(model)
    gains = mod.loss_gradient_gains(model, sites, data)
    site = sites[len(sites) // 2]
    module = model.get_submodule(site.name)
    total = torch.zeros(site.out_features, dtype=torch.float64)
    for ids in data:
        seen = {}

        def keep(m, a, out, seen=seen):  # noqa: ANN001
            seen["out"] = out

        h = module.register_forward_hook(keep)
        emb = model.get_input_embeddings().register_forward_hook(
            lambda m, a, out: out.requires_grad_()
        )
        with torch.enable_grad():
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            (g,) = torch.autograd.grad(loss, seen["out"])
        h.remove()
        emb.remove()
        total += g.reshape(-1, site.out_features).double().pow(2).sum(0)
    want = (total / sum(ids.numel() for ids in data)).sqrt().float()
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(gains[site.name], want, rtol=1e-5, atol=1e-12)


def test_mean_compensation_removes_the_mean_error_of_the_first_site():
    """The first site's input is not changed by any upstream mask, so adding W·m (m the mean
    dropped input) makes its output's mean over the calibration tokens the dense one."""
    from tiny_models import batches, tiny_model

    from was_compile import calibrate, make_schedule, masked_inputs

    mod = load_benchmark("score_ablation")
    model = tiny_model("llama").requires_grad_(False)
    data = batches(3, seed=7)
    cal = calibrate(model, data, progress=False)
    th = make_schedule(cal, 0.5, "was-uniform").thresholds
    first = cal.sites[0]
    assert first.block == 0 and first.kind == "q"  # runs before any other site
    means = mod.dropped_input_means(model, cal.sites, data, th)
    bias = first.weight(model).float() @ means[first.name]
    assert float(bias.abs().max()) > 0

    def mean_output(thresholds, biases):
        seen = []
        with torch.no_grad(), masked_inputs(model, thresholds), mod.output_biases(model, biases):
            # registered after the bias hook, so it sees the biased output
            h = model.get_submodule(first.name).register_forward_hook(
                lambda m, a, out: seen.append(out.reshape(-1, out.shape[-1]).double())
            )
            for ids in data:
                model(input_ids=ids, use_cache=False)
            h.remove()
        return torch.cat(seen).mean(0)

    dense = mean_output({}, {})
    plain = mean_output(th, {})
    compensated = mean_output(th, {first.name: bias})
    assert float((plain - dense).abs().max()) > 1e-3  # the mask does shift the mean
    torch.testing.assert_close(compensated, dense, rtol=0, atol=1e-5)


def test_component_swaps_take_each_kind_from_one_side():
    from types import SimpleNamespace

    mod = load_benchmark("score_ablation")
    sites = [SimpleNamespace(name=f"s{i}", kind=k) for i, k in enumerate(["q", "q", "k", "down"])]
    teal = {s.name: torch.rand(3) for s in sites}
    was = {s.name: torch.rand(3) + 2 for s in sites}
    swaps = mod.component_swaps(teal, was, sites)
    assert set(swaps) == {"teal", "was"} | {f"was {w} {k}" for w in ("on", "except")
                                            for k in ("q", "k", "down")}  # fmt: skip
    for kind in ("q", "k", "down"):
        for s in sites:
            on, off = (was, teal) if s.kind == kind else (teal, was)
            assert swaps[f"was on {kind}"][s.name] is on[s.name]
            assert swaps[f"was except {kind}"][s.name] is off[s.name]


def test_components_smoke(tmp_path):
    mod = load_benchmark("score_ablation")
    out = tmp_path / "components.json"
    argv = ["--smoke", "--components", "--out", str(out), "--sparsities", "0.5",
            "--threads", "1", "--calib-windows", "4", "--eval-windows", "4"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert mod.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] and len(doc["rows"]) == 2 + 2 * 7  # teal, was, 7 kinds x 2
    for r in doc["rows"]:
        assert r["ppl"] > 1 and abs(r["achieved_sparsity"] - 0.5) < 0.1
