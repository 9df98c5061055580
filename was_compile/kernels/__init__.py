"""Kernels: the PyTorch reference, the Triton kernels and the ``torch.ops.was`` custom ops."""

from . import ops  # noqa: F401  (registers torch.ops.was.sparse_linear)
