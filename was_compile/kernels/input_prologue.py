"""The input prologue: a site's input computed inside the GEMV from the tensor it comes from.

An MLP's output site (``down``) reads ``act(gate) * up`` (or ``act(fc1)``), a pointwise
function of the gate/up group's output. Unfused, a decode step runs it as one more kernel per
layer between two GEMVs, each with its launch and the gap around it (about 2-4 µs on the H100,
kernel_notes section 13). With a prologue the down GEMV reads the gate/up output ``src``
[M, C] directly: every step loads its channels' gate (and up) values, applies the activation
in fp32, multiplies, rounds once to src's dtype (what Inductor's fused pointwise kernel
stores), and thresholds that value as usual.

``x[m, k] = round(act(float(src[m, gate_start + k])) * float(src[m, up_start + k]))`` for
k < width; without ``up_start`` (``-1``) the product is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "InputPrologue", "prologue_reference"]

# name -> (kernel code, fp32 reference); the codes select the branches of
# ``gemv_rows.load_x``. (No Triton here: the CPU path imports this module.)
ACTIVATIONS = {
    "silu": (1, F.silu),
    "gelu_tanh": (2, lambda g: F.gelu(g, approximate="tanh")),
    "gelu": (3, F.gelu),
    "relu": (4, F.relu),
}


@dataclass(frozen=True)
class InputPrologue:
    """Where a site's input lies in ``src`` [..., C] and how it is made.

    act: one of ``ACTIVATIONS``; gate_start: first column of the activated operand;
    width: the site's input channels K; up_start: first column of the operand it is
    multiplied by, or -1 for ``act(gate)`` alone."""

    act: str
    gate_start: int
    width: int
    up_start: int = -1

    @property
    def code(self) -> int:
        return ACTIVATIONS[self.act][0]

    @property
    def gated(self) -> bool:
        return self.up_start >= 0

    def check(self, src_columns: int) -> None:
        """ValueError naming the problem when this prologue does not fit a src of that width."""
        if self.act not in ACTIVATIONS:
            raise ValueError(
                f"input prologue: activation {self.act!r} is not supported "
                f"(one of {sorted(ACTIVATIONS)})"
            )
        if self.width < 1:
            raise ValueError(f"input prologue: width must be >= 1, got {self.width}")
        spans = [("gate", self.gate_start)] + ([("up", self.up_start)] if self.gated else [])
        for name, start in spans:
            if start < 0 or start + self.width > src_columns:
                raise ValueError(
                    f"input prologue: {name} columns [{start}, {start + self.width}) are "
                    f"outside src's {src_columns} columns"
                )


def prologue_reference(src: torch.Tensor, p: InputPrologue) -> torch.Tensor:
    """src [..., C] -> the site input [..., p.width] in src.dtype (fp32 math, one rounding)."""
    p.check(src.shape[-1])
    gate = src[..., p.gate_start : p.gate_start + p.width].float()
    h = ACTIVATIONS[p.act][1](gate)
    if p.gated:
        h = h * src[..., p.up_start : p.up_start + p.width].float()
    return h.to(src.dtype)
