"""``make_schedule``: turn a calibration and a budget into a :class:`Schedule`, by method.

Methods (the budget is always the byte-weighted mean sparsity over all sites):

* ``teal-uniform`` / ``was-uniform``: the same sparsity at every site, magnitude or
  weight-aware thresholds;
* ``teal``: magnitude thresholds, greedy allocation among each block's components, every
  block at the budget (TEAL's recipe);
* ``was-greedy``: the same with weight-aware thresholds;
* ``was-tpe``: weight-aware, greedy inside blocks, constrained TPE across blocks; by default
  (``allocation="sensitivity"``) the search runs along measured block sensitivities
  (:mod:`.allocation`), ``allocation="uniform"``: the monotone band around the budget.

Greedy methods need ``model=`` and ``batches=`` (calibration input_ids [B, T]) unless
``trajectories=`` (a :class:`GreedyTrajectories` of the right score) is given; ``was-tpe``
also needs ``eval_batches=`` (held-out input_ids [B, T], not the calibration batches).
"""

from __future__ import annotations

from ..errors import WasError
from .allocation import DEFAULT_LEVELS, block_sensitivity, sensitivity_direction
from .calibration import Calibration
from .greedy import GreedyTrajectories, greedy_trajectories
from .schedule_file import Schedule, byte_weighted_sparsity
from .tpe import TOLERANCE, resolve_delta, tpe_search

UNIFORM_METHODS = {"teal-uniform": "mag", "was-uniform": "was"}
GREEDY_METHODS = {"teal": "mag", "was-greedy": "was"}
TPE_METHODS = {"was-tpe": "was"}
METHODS = {**UNIFORM_METHODS, **GREEDY_METHODS, **TPE_METHODS}

GREEDY_OPTIONS = {
    "base_step",
    "max_block_sparsity",
    "max_tokens",
    "error_fraction",
    "cap",
    "lazy",
    "max_step",
    "per_token",
}
TPE_OPTIONS = {
    "trials",
    "storage",
    "study_name",
    "seed",
    "objective",
    "monotone",
    "delta",
    "n_startup_trials",
    "allocation",
    "sensitivity",
    "spread",
}
KNOWN_OPTIONS = {"model", "batches", "eval_batches", "trajectories", "progress"}
KNOWN_OPTIONS |= GREEDY_OPTIONS | TPE_OPTIONS


def schedule_from_sparsities(
    calibration: Calibration, sparsity: dict[str, float], score: str, meta: dict
) -> Schedule:
    """A schedule giving each site its own target sparsity, thresholds read from calibration."""
    thresholds = {
        s.name: calibration.channel_thresholds(s.name, sparsity.get(s.name, 0.0), score)
        for s in calibration.sites
    }
    meta = {**meta, "score": score, "norm": calibration.norm, "calibration": calibration.data}
    return Schedule(list(calibration.sites), dict(sparsity), thresholds, meta)


def uniform_schedule(calibration: Calibration, sparsity: float, score: str = "was") -> Schedule:
    """The same sparsity at every site."""
    method = "was-uniform" if score == "was" else "teal-uniform"
    per_site = {s.name: float(sparsity) for s in calibration.sites}
    return schedule_from_sparsities(
        calibration, per_site, score, {"method": method, "budget": float(sparsity)}
    )


def trajectories_for(
    calibration: Calibration, score: str, method: str, options: dict
) -> GreedyTrajectories:
    """The greedy trajectories ``options`` give, or computed from ``model``/``batches``."""
    given = options.get("trajectories")
    if given is not None:
        if given.score != score:
            raise WasError(
                f"method {method!r} uses {score!r} scores but the trajectories given were "
                f"made with {given.score!r}"
            )
        names = {s.name for s in calibration.sites}
        have = {n for t in given.blocks.values() for n in t.sites}
        if names != have:
            raise WasError(
                "the greedy trajectories given do not cover this calibration's sites "
                f"({len(have)} vs {len(names)} sites): compute them for this model"
            )
        return given
    if options.get("model") is None or options.get("batches") is None:
        raise WasError(
            f"method {method!r} allocates sparsity greedily inside each block and needs the "
            "model and calibration inputs: make_schedule(cal, s, method, model=model, "
            "batches=[input_ids [B, T], ...]) (or trajectories=GreedyTrajectories)"
        )
    kwargs = {k: options[k] for k in GREEDY_OPTIONS if k in options}
    return greedy_trajectories(
        options["model"],
        calibration,
        options["batches"],
        score=score,
        progress=options.get("progress", True),
        **kwargs,
    )


def _check_achieved(calibration: Calibration, sparsity: dict[str, float], budget: float) -> None:
    achieved = byte_weighted_sparsity(calibration.sites, sparsity)
    if abs(achieved - budget) >= TOLERANCE:
        raise RuntimeError(f"schedule skips {achieved:.8f} of the weight bytes, not {budget}")


def greedy_schedule(
    calibration: Calibration, sparsity: float, method: str, options: dict
) -> Schedule:
    """Every block at ``sparsity``, split among its components by the greedy trajectory."""
    score = GREEDY_METHODS[method]
    traj = trajectories_for(calibration, score, method, options)
    per_site = traj.sparsities({b: float(sparsity) for b in traj.blocks})
    _check_achieved(calibration, per_site, sparsity)
    meta = {"method": method, "budget": float(sparsity), "greedy": traj.meta}
    return schedule_from_sparsities(calibration, per_site, score, meta)


def tpe_schedule(calibration: Calibration, sparsity: float, method: str, options: dict) -> Schedule:
    """Greedy inside blocks, constrained TPE across blocks (see :mod:`.tpe`)."""
    score = TPE_METHODS[method]
    if options.get("eval_batches") is None:
        raise WasError(
            f"method {method!r} scores candidate schedules on held-out data and needs "
            "eval_batches=[input_ids [B, T], ...] (not the calibration batches) and model="
        )
    if options.get("model") is None:
        raise WasError(f"method {method!r} needs model= to evaluate candidate schedules")
    traj = trajectories_for(calibration, score, method, options)
    allocation = options.get("allocation", "sensitivity")
    direction, bounds, sens_meta = None, None, None
    if allocation == "sensitivity":
        sens = options.get("sensitivity")
        if sens is None:
            sens = block_sensitivity(
                options["model"], calibration, traj, list(options["eval_batches"])
            )
        spread = float(options.get("spread", 0.2))
        bounds = (max(0.0, sparsity - spread), min(traj.max_sparsity(), sparsity + spread))
        direction = sensitivity_direction(sens)
        sens_meta = {"levels": list(DEFAULT_LEVELS), "spread": spread, "bounds": list(bounds),
                     "direction": [direction[b] for b in sorted(direction)]}  # fmt: skip
    elif allocation != "uniform":
        raise ValueError(f"allocation must be 'sensitivity' or 'uniform', got {allocation!r}")
    delta = resolve_delta(options.get("delta"), allocation)  # None: 0.0 along sensitivities
    res = tpe_search(
        options["model"],
        calibration,
        traj,
        float(sparsity),
        list(options["eval_batches"]),
        n_trials=options.get("trials", 50),
        storage=options.get("storage"),
        study_name=options.get("study_name"),
        seed=options.get("seed", 0),
        objective=options.get("objective", "ppl"),
        monotone=options.get("monotone", direction is None),
        delta=delta,
        n_startup_trials=options.get("n_startup_trials", 10),
        progress=options.get("progress", True),
        direction=direction,
        bounds=bounds,
    )
    _check_achieved(calibration, res.sparsity, sparsity)
    meta = {
        "method": method,
        "budget": float(sparsity),
        "greedy": traj.meta,
        "tpe": {
            "study_name": res.study_name,
            "storage": res.storage,
            "trials": res.n_complete,
            "best_trial": res.best_trial,
            "best_loss": res.best_loss,
            "objective": res.objective,
            "seed": options.get("seed", 0),
            "delta": delta,
            "monotone": options.get("monotone", direction is None),
            "allocation": allocation,
            "sensitivity": sens_meta,
            "block_sparsity": [res.block_sparsity[b] for b in sorted(res.block_sparsity)],
        },
    }
    return schedule_from_sparsities(calibration, res.sparsity, score, meta)


def make_schedule(
    calibration: Calibration, sparsity: float, method: str = "was-uniform", **kwargs
) -> Schedule:
    """A schedule for ``calibration``'s model skipping ``sparsity`` of the sites' weight bytes.

    Methods: ``teal-uniform``, ``was-uniform`` (no keyword arguments needed); ``teal``,
    ``was-greedy`` (``model=``, ``batches=`` or ``trajectories=``; greedy options
    ``base_step``, ``max_block_sparsity``, ``max_tokens``, ``error_fraction``, ``cap``,
    ``lazy``);
    ``was-tpe`` (also ``eval_batches=``; ``trials=50``, ``storage=`` (SQLite path or
    RDB URL, default ``./was_tpe.db``), ``study_name=``, ``seed=0``, ``objective="ppl"`` or
    ``"kl"``, ``allocation="sensitivity"`` (``sensitivity=`` block -> costs
    from :func:`~.allocation.block_sensitivity` to reuse them, ``spread=0.2``: blocks within
    +-spread of the budget; ``monotone=False``; ``delta=None``: 0.0, alpha alone along the
    sensitivities, or per-block offsets +-delta) or ``"uniform"`` (``monotone=True``;
    ``delta=None``: 0.05, every block within +-delta of the budget); see
    :func:`~.tpe.resolve_delta`).
    ``progress=False`` hides progress bars.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity is a fraction in [0, 1), got {sparsity}")
    unknown = set(kwargs) - KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"make_schedule got unknown options {sorted(unknown)}")
    if method in UNIFORM_METHODS:
        return uniform_schedule(calibration, sparsity, UNIFORM_METHODS[method])
    if method in GREEDY_METHODS:
        return greedy_schedule(calibration, sparsity, method, kwargs)
    if method in TPE_METHODS:
        return tpe_schedule(calibration, sparsity, method, kwargs)
    raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
