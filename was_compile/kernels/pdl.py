"""Programmatic dependent launch (PDL): the GEMV and its split-K reduction overlap their
launches with the kernel before them.

In a decode step every site group runs two kernels back to back (``_sparse_gemv_kernel``, then
``_splitk_reduce_kernel``), each launched after the previous kernel has drained. A kernel
profile of Llama-3-8B decode at 50% sparsity on the H100 (``benchmarks/decode_profile.py``)
found the 128 reductions of a step at 330 us and the launch gaps of the step at 367 us, against
2772 us in the GEMVs. With PDL (Hopper and later) a kernel launched with the
``programmatic stream serialization`` attribute may start while the kernel before it finishes:
the GEMV calls ``gdc_launch_dependents`` as it starts, so the reduction's CTAs are resident and
waiting (``gdc_wait``) when the last GEMV CTA ends, and the GEMV itself waits for the kernel that
wrote x the same way. ``gdc_wait`` returns once the previous grid has completed and its memory
is visible, so results are the same with and without it.

CUDA graphs keep the programmatic edges (stream capture, CUDA >= 12.3). ``WAS_PDL=0`` turns it
off (A/B timing, or a driver that refuses it); the interpreter and GPUs before sm_90 never use it.
"""

from __future__ import annotations

import functools
import os

import torch
import triton

from .autotune_configs import interpret_mode

__all__ = ["pdl_enabled", "gdc_wait", "gdc_launch_dependents"]

try:  # Triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _HAS_GDC = True
except ImportError:  # pragma: no cover - older Triton: never called (pdl_enabled is False)
    _HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@functools.lru_cache(maxsize=16)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    """True where the kernels launch with PDL: a CUDA device of compute capability >= 9.0,
    Triton with grid dependency control, not the interpreter, and ``WAS_PDL`` not "0"."""
    if not _HAS_GDC or interpret_mode() or device.type != "cuda":
        return False
    if os.environ.get("WAS_PDL", "1") == "0":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())
