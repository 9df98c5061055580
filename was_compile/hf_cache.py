"""The KV-cache argument of Hugging Face causal LMs, on both sides of its rename.

transformers 5.24 calls a causal LM's KV cache ``cache``, as the forward's argument and as the
output's field; earlier 5.x releases (5.17 on the lent GPU machine) call it
``past_key_values``, which 5.24 still accepts with a deprecation warning and 5.40 is to drop.
Code that steps a model with its cache passes :func:`cache_kwargs` and reads the returned
cache with :func:`returned_cache`, so it runs unchanged on both.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["cache_arg_name", "cache_kwargs", "returned_cache"]


def cache_arg_name(model: Any) -> str:
    """``"cache"`` where the forward of ``model`` (an instance or a class) takes that
    argument, else ``"past_key_values"``."""
    return _name_for(model if isinstance(model, type) else type(model))


@functools.lru_cache(maxsize=64)
def _name_for(cls: type) -> str:  # once per class: decode loops ask on every step
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(..., **cache_kwargs(model, cache))``."""
    return {cache_arg_name(model): cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned: ``output.cache`` (5.24+) or ``output.past_key_values``."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
