import gc
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# With no GPU the Triton kernels are tested in Triton's CPU interpreter. Triton decides when it
# is imported (its standard library: tl.zeros, tl.cdiv, ... are jit functions) and at each
# @triton.jit whether a function is interpreted, so the variable must be set before anything
# imports triton: here, before any test module is collected. (A kernel module imported
# earlier without it cannot be rebuilt later: the interpreter then fails on the first
# standard-library call, "Cannot call @triton.jit'd outside of the scope of a kernel".)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tiny test models: one thread is as fast, and OpenMP barriers on a busy 2-core machine are not.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no cache entries or recompile counts carried over."""
    gc.collect()
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
