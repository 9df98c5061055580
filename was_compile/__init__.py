"""was_compile: weight-aware activation sparsity as a torch.compile backend.

Example::

    import torch, was_compile
    cal = was_compile.calibrate(model, batches)           # score statistics per site
    schedule = was_compile.make_schedule(cal, 0.5)        # 50% of the sites' weight bytes
    fast = torch.compile(model, backend="was", options={"schedule": schedule})
"""

from . import kernels as _kernels  # noqa: F401  (registers torch.ops.was.*)
from .errors import InferenceOnlyError, MissingScheduleError, ScheduleMismatchError, WasError
from .schedules.calibration import Calibration, calibrate
from .schedules.greedy import GreedyTrajectories, greedy_trajectories
from .schedules.masking import dense_prompt, masked_inputs, measured_sparsity
from .schedules.methods import make_schedule
from .schedules.refine import refine_schedule
from .schedules.schedule_file import Schedule
from .schedules.tpe import tpe_search
from .sites import Site, find_sites
from .version import __version__

__all__ = [
    "Calibration",
    "GreedyTrajectories",
    "InferenceOnlyError",
    "MissingScheduleError",
    "Schedule",
    "ScheduleMismatchError",
    "Site",
    "WasError",
    "__version__",
    "calibrate",
    "dense_prompt",
    "find_sites",
    "greedy_trajectories",
    "make_schedule",
    "masked_inputs",
    "measured_sparsity",
    "refine_schedule",
    "tpe_search",
]
