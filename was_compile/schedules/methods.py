"""``make_schedule``: turn a calibration and a budget into a :class:`Schedule`, by method."""

from __future__ import annotations

from .calibration import Calibration
from .schedule_file import Schedule

UNIFORM_METHODS = {"teal-uniform": "mag", "was-uniform": "was"}


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


def make_schedule(calibration: Calibration, sparsity: float, method: str = "was-uniform",
                  **kwargs) -> Schedule:  # fmt: skip
    """A schedule for ``calibration``'s model skipping ``sparsity`` of the sites' weight bytes.

    Methods: ``teal-uniform`` (magnitude, same everywhere), ``was-uniform`` (weight-aware,
    same everywhere).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity is a fraction in [0, 1), got {sparsity}")
    if method in UNIFORM_METHODS:
        return uniform_schedule(calibration, sparsity, UNIFORM_METHODS[method])
    raise ValueError(f"unknown method {method!r}; choose one of {sorted(UNIFORM_METHODS)}")
