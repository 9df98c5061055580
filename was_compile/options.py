"""Backend options, parsed once from ``torch.compile(..., options={...})``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import MissingScheduleError, WasError
from .schedules.schedule_file import Schedule

HOW_TO_MAKE_A_SCHEDULE = (
    "make one with `cal = was_compile.calibrate(model, batches)` and "
    "`schedule = was_compile.make_schedule(cal, 0.5)`, or `was search MODEL`, then pass "
    'torch.compile(model, backend="was", options={"schedule": schedule}) '
    "(a Schedule or the folder it was saved to)"
)


@dataclass(frozen=True)
class WasOptions:
    """What the ``was`` backend does with a graph.

    schedule: the per-site thresholds (a :class:`Schedule` or a saved schedule folder).
    prefill: ``"dense"`` (default; prefill runs the plain matmul, as deployed by TEAL and
        WAS) or ``"sparse"`` (prefill tokens are masked like decode tokens).
    max_decode_rows: rows (batch x new tokens) up to which the sparse decode kernel may run
        (it hands over to the masked dense path sooner where ``was tune`` measured a smaller
        switch point for the shape); above it the prefill path runs.
    compiler: ``"inductor"`` (default) or ``"eager"`` (run the rewritten graph as is, for
        debugging and fast CPU tests).
    mode: a torch.compile mode (``"reduce-overhead"`` for CUDA graphs, ...). torch.compile
        refuses ``mode=`` together with ``options=``, so it is given here.
    fuse_activation: let the gate|up kernel write an MLP's ``act(gate) * up`` (or ``act(fc1)``)
        (``passes/fuse_output_activation.py``: one kernel fewer per block); False keeps it a
        separate op.
    inductor_config: extra Inductor config patches (any option key not listed here).
    """

    schedule: Schedule
    prefill: str = "dense"
    max_decode_rows: int = 16
    compiler: str = "inductor"
    mode: str | None = None
    fuse_activation: bool = True
    inductor_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefill not in ("dense", "sparse"):
            raise WasError(f"option prefill must be 'dense' or 'sparse', got {self.prefill!r}")
        if self.compiler not in ("inductor", "eager"):
            raise WasError(f"option compiler must be 'inductor' or 'eager', got {self.compiler!r}")
        if not 1 <= int(self.max_decode_rows) <= 16:
            raise WasError(
                f"option max_decode_rows must be in 1..16 (the decode kernel's limit), "
                f"got {self.max_decode_rows}"
            )

    @classmethod
    def parse(cls, options: dict | None) -> WasOptions:
        """Split ``options`` into ours and Inductor's; load the schedule if given as a path."""
        options = dict(options or {})
        schedule = options.pop("schedule", None)
        if schedule is None:
            raise MissingScheduleError(
                f"the 'was' backend needs a schedule: {HOW_TO_MAKE_A_SCHEDULE}"
            )
        if isinstance(schedule, (str, Path)):
            schedule = Schedule.load(schedule)
        if not isinstance(schedule, Schedule):
            raise MissingScheduleError(
                f"options['schedule'] must be a Schedule or a folder path, got "
                f"{type(schedule).__name__}: {HOW_TO_MAKE_A_SCHEDULE}"
            )
        ours = {f.name for f in fields(cls)} - {"schedule", "inductor_config"}
        kwargs = {k: options.pop(k) for k in list(options) if k in ours}
        return cls(schedule=schedule, inductor_config=options, **kwargs)
