"""Constrained TPE across blocks: exact budget in every trial, seeded reproducibility, resume
after a kill (SQLite), two workers on one PostgreSQL study."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
import transformers as T
from tiny_models import batches

import was_compile
from was_compile.errors import WasError
from was_compile.schedules.calibration import calibrate
from was_compile.schedules.greedy import greedy_trajectories
from was_compile.schedules.methods import make_schedule
from was_compile.schedules.schedule_file import byte_weighted_sparsity
from was_compile.schedules.tpe import (
    project_to_budget,
    redact,
    resolve_delta,
    resolve_storage,
    tpe_search,
)

VOCAB = 96
BUDGET = 0.5
ROOT = Path(__file__).resolve().parents[1]


def random_batches(n: int, seed: int, seq: int = 32, batch: int = 2) -> list[torch.Tensor]:
    return batches(n, seq=seq, seed=seed, batch=batch, vocab=VOCAB)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-block Llama, its calibration and greedy trajectories, held-out batches; all
    also saved to disk for worker subprocesses."""
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    sites = was_compile.find_sites(model)
    batches = random_batches(4, seed=1)
    cal = calibrate(model, batches, sites, progress=False)
    traj = greedy_trajectories(model, cal, batches, base_step=0.25, max_tokens=64, progress=False)
    eval_batches = random_batches(2, seed=2)
    d = tmp_path_factory.mktemp("tpe")
    model.save_pretrained(d / "model")
    cal.save(d / "cal.pt")
    traj.save(d / "greedy.json")
    torch.save(eval_batches, d / "eval.pt")
    return model, cal, traj, eval_batches, d


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM
    from was_compile.schedules.calibration import Calibration
    from was_compile.schedules.greedy import GreedyTrajectories
    from was_compile.schedules.tpe import tpe_search

    d, storage, study, n_trials, sleep, barrier = sys.argv[1:7]
    d = Path(d)
    model = AutoModelForCausalLM.from_pretrained(d / "model").eval()
    forward, calls = model.forward, [0]

    def slow_forward(*args, **kwargs):  # a trial long enough to be interrupted
        calls[0] += 1
        time.sleep(float(sleep))
        return forward(*args, **kwargs)

    model.forward = slow_forward
    cal = Calibration.load(d / "cal.pt")
    traj = GreedyTrajectories.load(d / "greedy.json")
    evals = torch.load(d / "eval.pt")
    if barrier != "-":  # start every worker's search at the same moment
        Path(barrier, str(__import__("os").getpid())).touch()
        while len(list(Path(barrier).iterdir())) < 2:
            time.sleep(0.05)
    res = tpe_search(model, cal, traj, 0.5, evals, n_trials=int(n_trials), storage=storage,
                     study_name=study, seed=0, progress=False)
    print(json.dumps({"trials_run": calls[0] // len(evals), "best": res.best_loss}))
    """
)


def start_worker(
    d: Path, storage: str, study: str, n_trials: int, sleep: float, barrier: str = "-"
) -> subprocess.Popen:
    script = d / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, str(script), str(d), storage, study, str(n_trials), str(sleep), barrier],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def check_trials_meet_budget(trials, traj, budget: float, monotone: bool = True) -> None:
    blocks = sorted(traj.blocks)
    weights = [traj.blocks[b].total_numel for b in blocks]
    for t in trials:
        per_block = t.user_attrs["block_sparsity"]
        mean = sum(v * w for v, w in zip(per_block, weights)) / sum(weights)
        assert abs(mean - budget) < 1e-6, (t.number, mean)
        assert abs(t.user_attrs["achieved"] - budget) < 1e-6
        assert all(budget - 0.05 - 1e-12 <= v <= budget + 0.05 + 1e-12 for v in per_block)
        if monotone:
            assert all(b >= a for a, b in zip(per_block, per_block[1:])), per_block


def test_projection_is_exact_and_keeps_order():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        budget = rng.uniform(0.05, 0.9)
        raw = sorted(rng.uniform(budget - 0.05, budget + 0.05) for _ in range(n))
        weights = [rng.uniform(1, 10) for _ in range(n)]
        lo, hi = max(0.0, budget - 0.05), min(0.98, budget + 0.05)
        v = project_to_budget(raw, weights, budget, lo, hi)
        mean = sum(a * w for a, w in zip(v, weights)) / sum(weights)
        assert abs(mean - budget) < 1e-9
        assert all(lo <= a <= hi for a in v)
        assert all(b >= a for a, b in zip(v, v[1:]))
    with pytest.raises(ValueError):
        project_to_budget([0.5], [1.0], 0.7, 0.4, 0.6)


def test_storage_urls(tmp_path):
    assert resolve_storage(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert resolve_storage("postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize("objective", ["ppl", "kl"])
def test_every_trial_meets_budget(setup, tmp_path, objective):
    model, cal, traj, evals, _ = setup
    res = tpe_search(
        model,
        cal,
        traj,
        BUDGET,
        evals,
        n_trials=8,
        storage=tmp_path / "s.db",
        objective=objective,
        n_startup_trials=4,
        progress=False,
    )
    study = optuna.load_study(study_name=res.study_name, storage=resolve_storage(tmp_path / "s.db"))
    trials = complete(study)
    assert len(trials) == 8 == res.n_complete
    check_trials_meet_budget(trials, traj, BUDGET)
    assert trials[0].params == {f"b{b}": BUDGET for b in traj.blocks}  # uniform comes first
    assert res.best_loss == min(t.value for t in trials)
    assert abs(byte_weighted_sparsity(cal.sites, res.sparsity) - BUDGET) < 1e-6
    if objective == "kl":
        assert trials[0].value > 0


def test_seeded_runs_reproduce(setup, tmp_path):
    model, cal, traj, evals, _ = setup
    runs = []
    for name in ("a", "b"):
        url = resolve_storage(tmp_path / f"{name}.db")
        tpe_search(
            model,
            cal,
            traj,
            BUDGET,
            evals,
            n_trials=7,
            storage=url,
            study_name="s",
            seed=3,
            monotone=False,
            n_startup_trials=3,
            progress=False,
        )
        runs.append(complete(optuna.load_study(study_name="s", storage=url)))
    assert [t.params for t in runs[0]] == [t.params for t in runs[1]]
    assert [t.value for t in runs[0]] == [t.value for t in runs[1]]
    check_trials_meet_budget(runs[0], traj, BUDGET, monotone=False)


def test_killed_search_resumes(setup, tmp_path):
    model, cal, traj, evals, d = setup
    url = resolve_storage(tmp_path / "resume.db")
    proc = start_worker(d, url, "resume", 6, sleep=0.4)
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no 2 complete trials in 180 s"
            try:
                if len(complete(optuna.load_study(study_name="resume", storage=url))) >= 2:
                    break
            except KeyError:  # study not created yet
                pass
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {
        t.number: (t.params, t.value)
        for t in complete(optuna.load_study(study_name="resume", storage=url))
    }
    assert 2 <= len(before) < 6
    res = tpe_search(
        model,
        cal,
        traj,
        BUDGET,
        evals,
        n_trials=6,
        storage=url,
        study_name="resume",
        progress=False,
    )
    after = complete(optuna.load_study(study_name="resume", storage=url))
    assert len(after) == 6 == res.n_complete
    for t in after:
        if t.number in before:
            assert (t.params, t.value) == before[t.number]
    assert set(before) <= {t.number for t in after}
    check_trials_meet_budget(after, traj, BUDGET)


def test_study_settings_mismatch_is_refused(setup, tmp_path):
    model, cal, traj, evals, _ = setup
    url = tmp_path / "m.db"
    tpe_search(
        model, cal, traj, BUDGET, evals, n_trials=1, storage=url, study_name="m", progress=False
    )
    with pytest.raises(ValueError, match="was made with"):
        tpe_search(
            model,
            cal,
            traj,
            BUDGET,
            evals,
            n_trials=2,
            storage=url,
            study_name="m",
            delta=0.1,
            progress=False,
        )


def test_make_schedule_was_tpe(setup, tmp_path):
    model, cal, traj, evals, _ = setup
    with pytest.raises(WasError, match="eval_batches"):
        make_schedule(cal, BUDGET, "was-tpe", model=model, trajectories=traj)
    sched = make_schedule(
        cal,
        BUDGET,
        "was-tpe",
        model=model,
        trajectories=traj,
        eval_batches=evals,
        trials=3,
        storage=tmp_path / "t.db",
        study_name="mk",
        progress=False,
    )
    assert abs(sched.achieved_sparsity() - BUDGET) < 1e-6
    tpe = sched.meta["tpe"]
    assert tpe["study_name"] == "mk" and tpe["trials"] == 3 and tpe["objective"] == "ppl"
    assert tpe["storage"].startswith("sqlite:///") and tpe["best_loss"] > 1.0
    assert sched.meta["method"] == "was-tpe" and sched.meta["budget"] == BUDGET


def test_alpha_only_search(setup, tmp_path):
    """delta = 0 along a direction: each trial samples alpha alone (no per-block offsets) and
    still meets the budget; without a direction delta = 0 is refused, saying why."""
    import optuna

    model, cal, traj, evals, _ = setup
    kw = dict(model=model, trajectories=traj, eval_batches=evals, trials=4, progress=False,
              storage=tmp_path / "a.db", delta=0.0)  # fmt: skip
    sched = make_schedule(cal, BUDGET, "was-tpe", study_name="alpha", **kw)
    assert abs(sched.achieved_sparsity() - BUDGET) < 1e-6
    study = optuna.load_study(study_name="alpha", storage=f"sqlite:///{tmp_path / 'a.db'}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 4 and all(set(t.params) == {"alpha"} for t in trials)
    assert len({round(t.params["alpha"], 9) for t in trials}) == 4  # alpha does vary
    with pytest.raises(ValueError, match="delta must be > 0.*or 0 with a direction"):
        make_schedule(cal, BUDGET, "was-tpe", study_name="band", allocation="uniform", **kw)


def test_default_delta_by_allocation(setup, tmp_path):
    """No delta given: 0.0 along the block sensitivities (every trial samples alpha alone),
    0.05 for the uniform band (every block sampled); the resolved delta names the default
    study, so a search with the other delta never resumes its trials."""
    import optuna

    assert resolve_delta(None, "sensitivity") == 0.0 and resolve_delta(None, "uniform") == 0.05
    assert resolve_delta(0.1, "sensitivity") == 0.1 and resolve_delta(0, "uniform") == 0.0
    with pytest.raises(ValueError, match="allocation must be one of"):
        resolve_delta(None, "band")
    model, cal, traj, evals, _ = setup
    kw = dict(model=model, trajectories=traj, eval_batches=evals, trials=3, progress=False)
    by_allocation = {}
    for allocation in ("sensitivity", "uniform"):
        db = tmp_path / f"{allocation}.db"
        sched = make_schedule(cal, BUDGET, "was-tpe", allocation=allocation, storage=db, **kw)
        tpe = sched.meta["tpe"]
        study = optuna.load_study(study_name=tpe["study_name"], storage=f"sqlite:///{db}")
        trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(trials) == 3 and abs(sched.achieved_sparsity() - BUDGET) < 1e-6
        by_allocation[allocation] = (tpe, {frozenset(t.params) for t in trials})
    tpe, params = by_allocation["sensitivity"]
    assert tpe["delta"] == 0.0 and tpe["study_name"].endswith("-d0")
    assert params == {frozenset({"alpha"})}  # no per-block offsets u_b
    tpe, params = by_allocation["uniform"]
    assert tpe["delta"] == 0.05 and tpe["study_name"].endswith("-d0.05")
    assert params == {frozenset(f"b{b}" for b in traj.blocks)}
    # offsets of 0.05 along the same direction, same storage: a study of its own, 3 new
    # trials, none taken from the alpha-only study
    db = tmp_path / "sensitivity.db"
    sched = make_schedule(cal, BUDGET, "was-tpe", delta=0.05, storage=db, **kw)
    tpe = sched.meta["tpe"]
    assert tpe["delta"] == 0.05 and tpe["study_name"].endswith("-d0.05") and tpe["trials"] == 3
    assert tpe["study_name"] != by_allocation["sensitivity"][0]["study_name"]
    study = optuna.load_study(study_name=tpe["study_name"], storage=f"sqlite:///{db}")
    assert all(set(t.params) == {"alpha", *(f"u{b}" for b in traj.blocks)} for t in study.trials)


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 in a temp dir, stopped at the end."""
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
        )
    pytest.importorskip("psycopg2", reason="python driver missing: pip install psycopg2-binary")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="was-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)
    try:
        run(initdb, "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
        run(pg_ctl, "-D", str(data / "db"), "-o", opts, "-l", str(data / "log"), "-w", "start")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_a_postgres_study(setup, tmp_path, postgres_url):
    *_, traj, _, d = setup
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    n_trials = 6
    procs = [start_worker(d, postgres_url, "pg", n_trials, 0.25, str(barrier)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    trials = study.get_trials()
    done = complete(study)
    assert n_trials <= len(done) <= n_trials + 1  # each worker may overshoot by one
    assert len(done) == len(trials), [t.state for t in trials]  # none failed or lost
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for p, (out, _) in zip(procs, outs):
        mine = [t for t in done if t.user_attrs["worker"].endswith(f":{p.pid}")]
        assert len(mine) >= 1, f"worker {p.pid} ran no trial"
        assert len(mine) == json.loads(out.strip().splitlines()[-1])["trials_run"]
    check_trials_meet_budget(done, traj, BUDGET)
