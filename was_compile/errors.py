"""Errors that tell the user what is wrong and what to do."""


class WasError(ValueError):
    """Base class of was_compile's user-facing errors."""


class ScheduleMismatchError(WasError):
    """A schedule does not fit the model it is applied to."""


class MissingScheduleError(WasError):
    """The backend was used without a schedule."""


class InferenceOnlyError(WasError, RuntimeError):
    """Gradients were requested from a sparsified model."""
