"""Allocation of sparsity across blocks: a TPE search with an exact budget constraint.

A trial samples one raw value per block in ``[budget - delta, budget + delta]`` (sorted to be
non-decreasing with depth when ``monotone``), then projects them onto the budget: the shift
``c`` with ``clip(raw_b + c, lo, hi)`` having byte-weighted mean exactly ``budget`` (found by
bisection, then made exact on the unclipped blocks). Every evaluated schedule therefore
skips exactly the budget's share of weight bytes: there is no penalty and no rejection.
Each block's sparsity becomes per-site sparsities through the block's greedy trajectory
(:mod:`~was_compile.schedules.greedy`). Given a ``direction`` (measured block sensitivities,
:mod:`~was_compile.schedules.allocation`), a trial is instead ``budget + alpha * z_b + u_b``
with ``alpha`` and per-block offsets ``u_b`` in ``[-delta, delta]`` sampled, in any order,
within wider ``bounds``: about 20 trials over ~30 independent block values is close to random
search, while one ``alpha`` along a measured direction is a search the trials can cover. By
default (:func:`resolve_delta`) a search along a direction has ``delta`` = 0, ``alpha`` alone,
and the band search ``delta`` = 0.05.

The objective runs on held-out batches, every token sparsified (eager masking): perplexity
(``"ppl"``) or the mean KL divergence per token from the dense model's next-token
distribution (``"kl"``, nats). Studies live in an optuna RDB storage (SQLite file by
default, or any SQLAlchemy URL such as ``postgresql://...``): a rerun of the same search
resumes the study, and several processes running the same search share its trials.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy.exc
import torch
from torch import nn
from tqdm.auto import tqdm

from ..sites import sites_fingerprint
from .calibration import Calibration
from .greedy import GreedyTrajectories
from .masking import masked_inputs
from .schedule_file import byte_weighted_sparsity

OBJECTIVES = ("ppl", "kl")
TOLERANCE = 1e-6
ALPHA_STARTS = (0.0, 0.025, 0.05)  # first trials of a search along a direction
# delta when none is given, by allocation: along measured block sensitivities alpha alone
# (no per-block offsets); the band search around the budget needs a band.
DEFAULT_DELTA = {"sensitivity": 0.0, "uniform": 0.05}


def resolve_delta(delta: float | None, allocation: str) -> float:
    """The ``delta`` a TPE search uses: ``delta`` itself if given, else ``allocation``'s default.

    ``delta`` is the half-width of the per-block offsets (a sparsity fraction): along a
    direction (``allocation="sensitivity"``) each block gets ``budget + alpha * z_b + u_b``
    with ``u_b`` in ``[-delta, delta]``; in the band search (``"uniform"``) each block is
    sampled in ``[budget - delta, budget + delta]``. ``None`` resolves to 0.0 for
    ``"sensitivity"`` (alpha alone: with the same trials, better than offsets of 0.05 in
    eight of twelve target cells over two CPUs, worse in three; quality_alpha_only.json,
    quality_offsets.json and quality.json in benchmarks/results) and 0.05 for
    ``"uniform"`` (a band of width 0 would leave nothing to search). A given value is
    returned as a float; :func:`tpe_search` checks it.
    """
    if allocation not in DEFAULT_DELTA:
        raise ValueError(f"allocation must be one of {sorted(DEFAULT_DELTA)}, got {allocation!r}")
    return DEFAULT_DELTA[allocation] if delta is None else float(delta)


def project_to_budget(
    raw: list[float], weights: list[float], budget: float, lo: float, hi: float
) -> list[float]:
    """``clip(raw_b + c, lo, hi)`` with the ``weights``-weighted mean exactly ``budget``.

    Raises ValueError if ``budget`` is outside [lo, hi] (no shift can meet it) and
    RuntimeError if the result misses the budget by more than 1e-6.
    """
    if not lo <= budget <= hi:
        raise ValueError(f"budget {budget} outside the block bounds [{lo}, {hi}]")
    total = float(sum(weights))

    def values(c: float) -> list[float]:
        return [min(max(r + c, lo), hi) for r in raw]

    def mean(v: list[float]) -> float:
        return sum(x * w for x, w in zip(v, weights)) / total

    a, b = lo - max(raw), hi - min(raw)  # mean(values(a)) == lo, mean(values(b)) == hi
    for _ in range(200):
        mid = 0.5 * (a + b)
        if mean(values(mid)) < budget:
            a = mid
        else:
            b = mid
        if b - a < 1e-15:
            break
    c = 0.5 * (a + b)
    v = values(c)
    free = [w for r, w in zip(raw, weights) if lo < r + c < hi]
    if free:  # the mean is linear in c on the unclipped blocks: close the last gap exactly
        c += (budget - mean(v)) * total / sum(free)
        v = values(c)
    err = abs(mean(v) - budget)
    if err >= TOLERANCE:
        raise RuntimeError(f"projection missed the budget {budget} by {err:.3g}")
    return v


def resolve_storage(storage: str | Path | None, default: str = "was_tpe.db") -> str:
    """An SQLAlchemy URL: URLs pass through; a file path (or None: ``default``) is SQLite."""
    if storage is None:
        storage = default
    storage = str(storage)
    if "://" in storage:
        return storage
    return f"sqlite:///{Path(storage).expanduser().resolve()}"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for metadata and messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so trials of killed processes end up FAILED.

    Workers starting together on a fresh database race to create its tables; the losers
    get a database error and retry after a short random wait.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120
                )
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


class Objective:
    """Loss of the masked model on held-out batches: perplexity or KL to the dense model.

    eval_batches: input_ids tensors [B, T]. For ``"kl"`` the dense log-probabilities
    [B, T-1, V] of every batch are computed once and kept on the CPU in float32.
    """

    def __init__(self, model: nn.Module, eval_batches: list[torch.Tensor], objective: str):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not eval_batches:
            raise ValueError("the TPE objective needs at least one held-out batch")
        self.model, self.objective = model, objective
        self.device = next(model.parameters()).device
        self.batches = [b.to(self.device) for b in eval_batches]
        self.dense: list[torch.Tensor] = []
        if objective == "kl":
            self.dense = [self._log_probs(b).cpu() for b in self.batches]

    @torch.no_grad()
    def _log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids, use_cache=False).logits[:, :-1]
        return torch.log_softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def __call__(self, thresholds: dict[str, torch.Tensor]) -> float:
        total, count = 0.0, 0
        with masked_inputs(self.model, thresholds):
            for i, ids in enumerate(self.batches):
                logp = self._log_probs(ids)
                if self.objective == "ppl":
                    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
                    total += float(nll.sum())
                else:
                    ref = self.dense[i].to(logp.device)
                    total += float((ref.exp() * (ref - logp)).sum())
                count += ids.shape[0] * (ids.shape[1] - 1)
        mean = total / max(count, 1)
        return math.exp(min(mean, 700.0)) if self.objective == "ppl" else mean


@dataclass
class TpeResult:
    """The best schedule found: per-site and per-block sparsities and where it is stored."""

    sparsity: dict[str, float]
    block_sparsity: dict[int, float]
    best_loss: float
    best_trial: int
    study_name: str
    storage: str
    n_complete: int
    objective: str


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def default_study_name(
    calibration: Calibration, budget: float, objective: str, delta: float
) -> str:
    """The study name a search gets when none is given: model sites, budget, objective and
    ``delta`` (resolved), so searches with other offsets never share trials."""
    fp = sites_fingerprint(calibration.sites)
    return f"was-tpe-{fp}-{budget:.4f}-{objective}-d{delta:g}"


def tpe_search(
    model: nn.Module,
    calibration: Calibration,
    trajectories: GreedyTrajectories,
    budget: float,
    eval_batches: list[torch.Tensor],
    n_trials: int = 50,
    storage: str | Path | None = None,
    study_name: str | None = None,
    seed: int = 0,
    objective: str = "ppl",
    monotone: bool = True,
    delta: float | None = None,
    n_startup_trials: int = 10,
    progress: bool = True,
    direction: dict[int, float] | None = None,
    bounds: tuple[float, float] | None = None,
    alpha_max: float = 0.1,
    alpha_starts: tuple[float, ...] = ALPHA_STARTS,
) -> TpeResult:
    """Search per-block sparsities with byte-weighted mean ``budget`` (a fraction).

    Runs trials until the study holds ``n_trials`` COMPLETE trials (resumed studies only
    run the missing ones; concurrent workers may overshoot by one trial each). The first
    trial is the uniform allocation. The sampler is re-seeded from ``seed`` and the
    study's trial count before each trial, so a single-worker search is reproducible.

    Without ``direction``, block b is sampled in ``[budget - delta, budget + delta]``
    (``delta`` None: 0.05). ``direction`` (block -> z_b, e.g.
    :func:`~was_compile.schedules.allocation.sensitivity_direction`): a trial samples
    ``alpha`` in ``[0, alpha_max]`` and per-block offsets ``u_b`` in ``[-delta, delta]``
    (``delta`` None or 0: none, alpha alone is searched); block
    b gets ``budget + alpha * z_b + u_b`` (in any order: ``monotone`` must be False),
    projected onto the budget within ``bounds`` (default ``[budget - delta, budget +
    delta]``). The first trials are ``alpha`` = each of ``alpha_starts`` with no offsets
    (``alpha`` = 0: uniform). The resolved ``delta`` (:func:`resolve_delta`) is part of the
    default study name and of the settings stored with the study: a study made with another
    ``delta`` is never resumed.
    """
    delta = resolve_delta(delta, "uniform" if direction is None else "sensitivity")
    blocks = sorted(trajectories.blocks)
    weights = [float(trajectories.blocks[b].total_numel) for b in blocks]
    lo, hi = bounds if bounds is not None else (budget - delta, budget + delta)
    lo, hi = max(0.0, lo), min(trajectories.max_sparsity(), hi)
    if delta < 0 or (delta == 0 and direction is None):
        raise ValueError(
            f"delta must be > 0 (the band every block is searched in), or 0 with a direction "
            f"(alpha alone is searched), got {delta}"
        )
    if not lo <= budget <= hi:
        raise ValueError(f"budget {budget} is outside the blocks' range [{lo}, {hi}]")
    if direction is not None:
        if monotone:
            raise ValueError("a search along a direction is not monotone: pass monotone=False")
        if sorted(direction) != blocks:
            raise ValueError(f"direction names blocks {sorted(direction)}, not {blocks}")
        z = [float(direction[b]) for b in blocks]
        if any(not 0.0 <= a <= alpha_max for a in alpha_starts) or alpha_max <= 0:
            raise ValueError(f"alpha_starts {alpha_starts} must lie in [0, {alpha_max}]")
    url = resolve_storage(storage)
    study_name = study_name or default_study_name(calibration, budget, objective, delta)
    settings = {
        "budget": budget,
        "delta": delta,
        "monotone": monotone,
        "objective": objective,
        "score": trajectories.score,
        "fingerprint": sites_fingerprint(calibration.sites),
        "blocks": len(blocks),
    }
    if direction is not None:
        settings["direction"] = [round(x, 9) for x in z]
        settings["bounds"] = [lo, hi]
        settings["alpha_max"] = alpha_max
        settings["alpha_starts"] = list(alpha_starts)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(url),
        direction="minimize",
        load_if_exists=True,
    )
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        raise ValueError(
            f"study {study_name!r} in {redact(url)} was made with {stored}, not {settings}: "
            "use another study name (--study-name) or storage"
        )
    evaluate = Objective(model, eval_batches, objective)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def run_trial(trial: optuna.Trial) -> float:
        if direction is not None:
            alpha = trial.suggest_float("alpha", 0.0, alpha_max)
            raw = [budget + alpha * zb
                   + (trial.suggest_float(f"u{b}", -delta, delta) if delta > 0 else 0.0)
                   for b, zb in zip(blocks, z)]  # fmt: skip
        else:
            raw = [trial.suggest_float(f"b{b}", budget - delta, budget + delta) for b in blocks]
        if monotone:
            raw = sorted(raw)
        per_block = project_to_budget(raw, weights, budget, lo, hi)
        sparsity = trajectories.sparsities(dict(zip(blocks, per_block)))
        achieved = byte_weighted_sparsity(calibration.sites, sparsity)
        trial.set_user_attr("block_sparsity", per_block)
        trial.set_user_attr("achieved", achieved)
        trial.set_user_attr("worker", worker)
        if abs(achieved - budget) >= TOLERANCE:
            raise RuntimeError(f"trial {trial.number}: sparsity {achieved} misses {budget}")
        thresholds = {  # a site at 0 would only zero what is zero already: leave it alone
            s.name: calibration.channel_thresholds(s.name, sparsity[s.name], trajectories.score)
            for s in calibration.sites
            if sparsity[s.name] > 0.0
        }
        return evaluate(thresholds)

    if not study.get_trials(deepcopy=False):
        if direction is not None:
            for a in alpha_starts:
                offsets = {f"u{b}": 0.0 for b in blocks} if delta > 0 else {}
                study.enqueue_trial({"alpha": a, **offsets})
        else:
            study.enqueue_trial({f"b{b}": budget for b in blocks}, skip_if_exists=True)
    done = _n_complete(study)
    bar = tqdm(total=n_trials, initial=min(done, n_trials), desc="TPE", disable=not progress)
    try:
        while done < n_trials:
            started = len(study.get_trials(deepcopy=False))
            study.sampler = optuna.samplers.TPESampler(
                seed=(seed * 1_000_003 + started) % 2**32, n_startup_trials=n_startup_trials
            )
            study.optimize(run_trial, n_trials=1, catch=())
            now = _n_complete(study)
            bar.update(max(0, min(now, n_trials) - bar.n))
            bar.set_postfix(best=f"{study.best_value:.4g}", refresh=True)
            done = now
    finally:
        bar.close()
    best = study.best_trial
    per_block = dict(zip(blocks, best.user_attrs["block_sparsity"]))
    sparsity = trajectories.sparsities(per_block)
    achieved = byte_weighted_sparsity(calibration.sites, sparsity)
    if abs(achieved - budget) >= TOLERANCE:
        raise RuntimeError(f"best trial's sparsity {achieved} misses the budget {budget}")
    return TpeResult(
        sparsity,
        per_block,
        float(best.value),
        best.number,
        study_name,
        redact(url),
        _n_complete(study),
        objective,
    )
