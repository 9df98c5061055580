"""The output activation: a group's ``act(gate) * up`` (or ``act(y)``) written by its GEMV.

An MLP's output site (``down``) reads ``act(gate) * up``, a pointwise function of the gate|up
group's output. Unfused, a decode step runs it as one more kernel per block between two
GEMVs, each with its launch and the gap around it (kernel_notes section 13: 1.7-3.7 µs per
launch boundary on the H100). Here the gate|up GEMV writes it: in the split-K epilogue
(``splitk.py``) the CTA that finishes a gate column tile or its up partner second reads the
partner's finished values back from L2 and writes ``h = act(g) * u`` for those columns, so
each element is computed once (computing it instead in the down GEMV's loop, once per lane
and column tile, made Llama-3-8B decode 2% slower: ``results/prologue_ab``).

Semantics (what Inductor's fused pointwise kernel computes from the rounded gate|up output):
``h = round(act(float(round(g))) * float(round(u)))``; without a gate (``gated=False``)
``h = round(act(float(round(y))))`` over every column. No Triton here: the CPU path imports
this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "OutputActivation", "activation_reference"]

# name -> (kernel code, fp32 reference); the codes select the branches of
# ``splitk._activation``.
ACTIVATIONS = {
    "silu": (1, F.silu),
    "gelu_tanh": (2, lambda g: F.gelu(g, approximate="tanh")),
    "gelu": (3, F.gelu),
    "relu": (4, F.relu),
}


@dataclass(frozen=True)
class OutputActivation:
    """act: one of ``ACTIVATIONS``. gated: the group's N = 2I columns are gate and up (two
    segments of I, or one fused gate_up segment) and the output is act(gate) * up [..., I];
    gate_first: the gate is the first half.
    Not gated: the output is act(y) [..., N]."""

    act: str
    gated: bool = True
    gate_first: bool = True

    @property
    def code(self) -> int:
        return ACTIVATIONS[self.act][0]

    def check(self, segment_ends: Sequence[int]) -> None:
        """ValueError naming the problem when this activation does not fit the group."""
        if self.act not in ACTIVATIONS:
            raise ValueError(
                f"output activation {self.act!r} is not supported (one of {sorted(ACTIVATIONS)})"
            )
        ends = list(segment_ends)
        halves = ends == [ends[-1] // 2, ends[-1]] or ends == [ends[-1]]
        if self.gated and not (halves and ends[-1] % 2 == 0):
            raise ValueError(
                f"a gated output activation needs two segments of equal width (gate and up) "
                f"or one of even width (a fused gate_up), got segment ends {ends}"
            )

    def columns(self, n: int) -> int:
        """Output columns for a group of N columns."""
        return n // 2 if self.gated else n


def activation_reference(
    y: torch.Tensor, oa: OutputActivation, segment_ends: Sequence[int]
) -> torch.Tensor:
    """y [..., N] (the group's output, in its dtype) -> [..., oa.columns(N)] in y's dtype."""
    oa.check(segment_ends)
    fn = ACTIVATIONS[oa.act][1]
    if not oa.gated:
        return fn(y.float()).to(y.dtype)
    half = segment_ends[-1] // 2
    first, second = y[..., :half].float(), y[..., half:].float()
    gate, up = (first, second) if oa.gate_first else (second, first)
    return (fn(gate) * up).to(y.dtype)
