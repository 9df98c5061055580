"""Calibration: thresholds meet their sparsity on held-out data; weight-aware selection keeps
the output closer than magnitude selection; save/load."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import was_compile
from was_compile.schedules.calibration import Calibration, calibrate
from was_compile.schedules.masking import dense_prompt, masked_inputs, measured_sparsity

VOCAB = 96


def tiny_llama(seed: int = 0, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return T.LlamaForCausalLM(cfg).eval()


def random_batches(n: int, seed: int, seq: int = 48, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(n)]


def site_inputs(
    model: torch.nn.Module, names: list[str], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Dense inputs [tokens, in_features] reaching each module of ``names`` on ``batches``."""
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: xs[n].append(a[0].detach().reshape(-1, a[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in xs.items()}


@pytest.fixture(scope="module")
def model_and_sites():
    model = tiny_llama()
    return model, was_compile.find_sites(model)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_threshold_meets_sparsity_on_held_out_inputs(model_and_sites, norm):
    """Each site alone (dense inputs, as calibrated): the fraction of held-out channels at
    or under the threshold is the target, for both scores. (Masking every site at once
    shifts later sites' inputs: that is the searches' business, not the thresholds'.)

    16k tokens each side: in a random model the attention output is a running mean that
    varies little within a sequence, so o_proj needs many sequences for a 1-point test.
    """
    model, sites = model_and_sites
    cal = calibrate(
        model, random_batches(8, seed=1, seq=32, batch=64), sites, norm=norm, progress=False
    )
    held_out = random_batches(8, seed=2, seq=32, batch=64)
    inputs = site_inputs(model, [s.name for s in sites], held_out)
    for score in ("was", "mag"):
        for target in (0.3, 0.5, 0.7):
            for s in sites:
                tau = cal.channel_thresholds(s.name, target, score)
                measured = (inputs[s.name].abs() <= tau).float().mean().item()
                assert abs(measured - target) < 0.01, (s.name, score, norm, target, measured)


def test_masking_every_site_measures_close_to_target(model_and_sites):
    model, sites = model_and_sites
    cal = calibrate(model, random_batches(6, seed=1), sites, progress=False)
    tau = {s.name: cal.channel_thresholds(s.name, 0.5, "was") for s in sites}
    measured = measured_sparsity(model, tau, random_batches(2, seed=2))
    for s in sites:  # all sites masked together: upstream masks move later inputs a little
        assert abs(measured[s.name] - 0.5) < 0.06, (s.name, measured[s.name])


def test_l1_and_l2_norms_differ(model_and_sites):
    model, sites = model_and_sites
    cal1 = calibrate(model, random_batches(1, seed=1), sites, norm="l1", progress=False)
    cal2 = calibrate(model, random_batches(1, seed=1), sites, norm="l2", progress=False)
    s = sites[0]
    w = s.weight(model).detach()
    torch.testing.assert_close(cal1.norms[s.name], w.abs().sum(0))
    torch.testing.assert_close(cal2.norms[s.name], w.pow(2).sum(0).sqrt())


def test_weight_aware_selection_has_lower_output_error():
    model = tiny_llama(seed=3)
    sites = was_compile.find_sites(model)
    site = next(s for s in sites if s.kind == "down" and s.block == 1)
    linear = model.get_submodule(site.name)
    with torch.no_grad():  # a quarter of the input columns weigh 10x more
        linear.weight[:, ::4] *= 10.0
    cal = calibrate(model, random_batches(6, seed=4), sites, progress=False)
    x = site_inputs(model, [site.name], random_batches(4, seed=5))[site.name]
    w = linear.weight.detach()
    dense = x @ w.T
    errors, sparsities = {}, {}
    for score in ("was", "mag"):
        tau = cal.channel_thresholds(site.name, 0.5, score)
        keep = x.abs() > tau
        sparsities[score] = 1.0 - keep.float().mean().item()
        errors[score] = torch.linalg.norm(torch.where(keep, x, 0.0) @ w.T - dense).item()
    assert abs(sparsities["was"] - sparsities["mag"]) < 0.01, sparsities
    assert errors["was"] < 0.5 * errors["mag"], errors  # measured: 0.069 vs 0.252


def test_masked_inputs_zero_below_threshold(model_and_sites):
    model, sites = model_and_sites
    site = sites[0]
    tau = {site.name: torch.full((site.in_features,), 1e9)}
    counts: dict[str, list[int]] = {}
    with torch.no_grad(), masked_inputs(model, tau, counts):
        model(input_ids=random_batches(1, seed=0)[0], use_cache=False)
    assert counts[site.name][0] == counts[site.name][1] > 0


@pytest.mark.parametrize("prefix", [1, 3])
def test_masked_inputs_dense_prefix_leaves_the_first_positions_dense(prefix):
    """Positions < prefix of every sequence pass unmasked, the rest are masked exactly;
    counts still cover every position (float64 reference)."""
    torch.manual_seed(prefix)
    lin = torch.nn.Linear(24, 10, bias=False)
    model = torch.nn.Sequential(lin)
    x = torch.randn(2, 7, 24)
    tau = torch.rand(24) * 1.2
    counts: dict[str, list[int]] = {}
    with torch.no_grad(), masked_inputs(model, {"0": tau}, counts, dense_prefix=prefix):
        y = model(x)
    keep = x.abs() > tau
    keep[:, :prefix, :] = True
    want = (torch.where(keep, x, 0.0).double() @ lin.weight.double().t()).float()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5 * 24**0.5)
    assert counts["0"] == [int((~keep).sum()), x.numel()]
    assert int((~keep[:, prefix:, :]).sum()) > 0  # the rest was masked at all
    with pytest.raises(ValueError, match="dense_prefix"):
        with masked_inputs(model, {"0": tau}, dense_prefix=-1):
            pass


def test_dense_prompt_sets_the_prefix_of_masked_inputs_inside_it_only():
    """dense_prompt(n) is the default dense_prefix of every masked_inputs inside it; an
    explicit dense_prefix wins; outside, every position is masked again."""
    torch.manual_seed(5)
    lin = torch.nn.Linear(16, 6, bias=False)
    model = torch.nn.Sequential(lin)
    x = torch.randn(3, 5, 16)
    tau = torch.rand(16)

    def run(**kwargs):
        with torch.no_grad(), masked_inputs(model, {"0": tau}, **kwargs):
            return model(x)

    def want(prefix: int) -> torch.Tensor:
        keep = x.abs() > tau
        keep[:, :prefix, :] = True
        return (torch.where(keep, x, 0.0).double() @ lin.weight.double().t()).float()

    tol = {"rtol": 1e-5, "atol": 1e-5 * 16**0.5}
    with dense_prompt(2):
        torch.testing.assert_close(run(), want(2), **tol)
        torch.testing.assert_close(run(dense_prefix=0), want(0), **tol)
    torch.testing.assert_close(run(), want(0), **tol)
    assert (want(2) - want(0)).abs().max() > 1e-3  # the prefix changes the output at all
    with pytest.raises(ValueError, match="dense_prompt"):
        with dense_prompt(-1):
            pass


def test_calibration_save_load_round_trip(model_and_sites, tmp_path):
    model, sites = model_and_sites
    cal = calibrate(
        model, random_batches(2, seed=1), sites, norm="l2", source="rnd", progress=False
    )
    cal.data["seq_len"] = 48
    cal.save(tmp_path / "cal.pt")
    back = Calibration.load(tmp_path / "cal.pt")
    assert back.sites == cal.sites and back.norm == "l2" and back.data == cal.data
    for s in sites:
        torch.testing.assert_close(back.norms[s.name], cal.norms[s.name])
        for score in ("was", "mag"):
            torch.testing.assert_close(
                back.channel_thresholds(s.name, 0.4, score),
                cal.channel_thresholds(s.name, 0.4, score),
            )


@pytest.mark.parametrize("score_method", ["was-uniform", "teal-uniform"])
def test_sequential_refinement_meets_every_site_target(score_method):
    """Under the whole schedule, each site's sparsity on the calibration batches equals its
    target after one sequential sweep (dense-calibrated thresholds miss downstream)."""
    from was_compile.schedules.refine import refine_schedule

    model = tiny_llama(layers=3)
    sites = was_compile.find_sites(model)
    calib = random_batches(6, seed=1)
    cal = calibrate(model, calib, sites, progress=False)
    schedule = was_compile.make_schedule(cal, 0.6, score_method)
    refined = refine_schedule(model, schedule, calib)
    assert refined.meta["refined"] == "sequential"
    measured = measured_sparsity(model, refined.thresholds, calib)
    for s in sites:
        assert abs(measured[s.name] - 0.6) < 2e-3, (s.name, measured[s.name])
