"""Module-level set-up of the test modules that run Triton kernels in the CPU interpreter.

``conftest.py`` turns the interpreter on before any test module is collected where no GPU is
present; where one is, these modules skip unless ``TRITON_INTERPRET=1`` was set before Python
started (there the kernels are tested compiled, ``-m gpu``).
"""

from __future__ import annotations

import os

import pytest


def use_interpreter() -> None:
    """Call at the top of a test module, before it imports triton: skip the module unless
    Triton runs in its interpreter in this process, or where triton is not installed."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "TRITON_INTERPRET is not 1 (a CUDA device is present, so conftest left it off): "
            "the kernels are tested compiled there (-m gpu); run this module alone with "
            "TRITON_INTERPRET=1 to test them in the interpreter",
            allow_module_level=True,
        )
    pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot run")
