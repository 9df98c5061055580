"""Allocation across blocks from sensitivities: the direction, exact budget, measured
sensitivities agree with the TPE objective; a TPE search along the direction starts with the
given alphas (0: uniform) and keeps every trial on the budget."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import batches, tiny_model

import was_compile
from was_compile.schedules.allocation import (
    block_sensitivity,
    mean_nll,
    sensitivity_direction,
    tilted_allocation,
)
from was_compile.schedules.calibration import calibrate
from was_compile.schedules.greedy import greedy_trajectories
from was_compile.schedules.schedule_file import byte_weighted_sparsity
from was_compile.schedules.tpe import Objective, tpe_search

LEVELS = (0.4, 0.6, 0.8)


def test_direction_standardised_log_costs():
    sens = {0: [0.8], 1: [0.08], 2: [0.008]}  # log costs evenly spaced
    z = sensitivity_direction(sens)
    assert z[0] == pytest.approx(-math.sqrt(1.5)) and z[2] == pytest.approx(math.sqrt(1.5))
    assert z[1] == pytest.approx(0.0, abs=1e-12)
    assert sensitivity_direction({0: [-1.0], 1: [0.0]}) == {0: 0.0, 1: 0.0}  # floored: equal


def test_tilted_allocation_exact_budget_reference():
    z = {0: -1.0, 1: 0.0, 2: 1.0}
    w = {0: 1.0, 1: 2.0, 2: 1.0}
    alloc = tilted_allocation(z, w, 0.5, 0.1, 0.3, 0.7)
    assert alloc == pytest.approx({0: 0.4, 1: 0.5, 2: 0.6})  # symmetric: no shift needed
    alloc = tilted_allocation(z, w, 0.5, 0.4, 0.3, 0.7)  # clipped at both ends, mean kept
    assert alloc == pytest.approx({0: 0.3, 1: 0.5, 2: 0.7})
    w = {0: 1.0, 1: 1.0, 2: 2.0}  # asymmetric weights: a shift c keeps the mean exact
    alloc = tilted_allocation(z, w, 0.5, 0.1, 0.0, 1.0)
    c = 0.5 - (0.4 + 0.5 + 2 * 0.6) / 4
    assert alloc == pytest.approx({0: 0.4 + c, 1: 0.5 + c, 2: 0.6 + c})


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    cal = calibrate(model, batches(2, seed=1), progress=False)
    traj = greedy_trajectories(model, cal, batches(2, seed=1), base_step=0.25,
                               max_block_sparsity=0.8, lazy=True, progress=False)  # fmt: skip
    return model, cal, traj


def test_sensitivity_matches_objective(setup):
    model, cal, traj = setup
    held = batches(2, seed=7)
    sens = block_sensitivity(model, cal, traj, held, LEVELS)
    dense = math.log(Objective(model, held, "ppl")({}))
    assert mean_nll(model, held, {}) == pytest.approx(dense, rel=1e-6)
    per_site = traj.block_sparsities(1, 0.6)
    tau = {n: cal.channel_thresholds(n, s, "was") for n, s in per_site.items() if s > 0}
    ref = math.log(Objective(model, held, "ppl")(tau)) - dense
    assert sens[1][1] == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert all(len(v) == len(LEVELS) for v in sens.values())


def test_tpe_along_direction_starts_with_alphas(setup, tmp_path):
    model, cal, traj = setup
    held = batches(1, seed=7)
    z = {0: -1.0, 1: 1.0}  # equal block sizes: budget -+ alpha
    res = tpe_search(model, cal, traj, 0.5, held, n_trials=5, storage=tmp_path / "s.db",
                     seed=0, monotone=False, delta=0.05, direction=z, bounds=(0.3, 0.7),
                     alpha_starts=(0.0, 0.1), alpha_max=0.15, progress=False)  # fmt: skip
    import optuna

    study = optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{tmp_path}/s.db")
    trials = study.get_trials()
    assert trials[0].user_attrs["block_sparsity"] == pytest.approx([0.5, 0.5], abs=1e-9)
    assert trials[1].user_attrs["block_sparsity"] == pytest.approx([0.4, 0.6], abs=1e-9)
    assert len(trials) == 5 and all(0.3 <= x <= 0.7 for x in trials[4].user_attrs["block_sparsity"])
    for t in trials:
        per_site = traj.sparsities(dict(zip([0, 1], t.user_attrs["block_sparsity"])))
        assert abs(byte_weighted_sparsity(cal.sites, per_site) - 0.5) < 1e-6
    with pytest.raises(ValueError, match="monotone"):
        tpe_search(model, cal, traj, 0.5, held, n_trials=1, storage=tmp_path / "t.db",
                   direction=z, progress=False)  # fmt: skip


def test_make_schedule_sensitivity_allocation(setup, tmp_path):
    model, cal, traj = setup
    sched = was_compile.make_schedule(
        cal, 0.5, "was-tpe", model=model, eval_batches=batches(1, seed=7), trajectories=traj,
        trials=2, storage=tmp_path / "m.db", progress=False,
    )  # fmt: skip
    tpe = sched.meta["tpe"]
    assert tpe["allocation"] == "sensitivity" and not tpe["monotone"]
    assert abs(sched.achieved_sparsity() - 0.5) < 1e-6
    assert torch.isfinite(torch.tensor(tpe["sensitivity"]["direction"])).all()
