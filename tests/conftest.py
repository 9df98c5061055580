import gc
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# Tiny test models: one thread is as fast, and OpenMP barriers on a busy 2-core machine are not.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no cache entries or recompile counts carried over."""
    gc.collect()
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
