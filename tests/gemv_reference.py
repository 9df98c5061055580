"""float64 reference and tolerances shared by the sparse GEMV tests (interpreter and GPU).

Tolerances per dtype (rtol, atol per sqrt(K)): output rounding (half an ulp of the output
dtype) plus fp32 accumulation over K terms.
"""

import math

import torch

TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def reference(x, w_t, thr, ends, bias):
    """y [M, N] float64 on x's device: segment s of y = where(|x| > thr[s], x, 0) @ w_t[:, s]
    (+ bias), the mask compared in fp32 as the op does, products and sums in float64."""
    x64, w64 = x.double(), w_t.double()
    y = torch.empty(x.shape[0], w_t.shape[1], dtype=torch.float64, device=x.device)
    start = 0
    for s, end in enumerate(ends):
        xm = torch.where(x.abs().float() > thr[s].float(), x64, torch.zeros_like(x64))
        y[:, start:end] = xm @ w64[:, start:end]
        start = end
    if bias is not None:
        y += bias.double()
    return y


def check(y, ref, x, k):
    """y matches ref within the dtype's tolerance; no NaN (unwritten outputs)."""
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) output elements"
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(y.double(), ref, rtol=rtol, atol=atol * math.sqrt(k))


def check_activation(h, x, y64, oa, ends, k):
    """h (the kernel's act(gate) * up, or act(y)) against the float64 activation of y64, the
    float64 reference of y: per element, y's own tolerance (``check``) carried through the
    activation's slope, plus half an ulp of h's dtype."""
    from was_compile.kernels.output_activation import activation_reference

    rtol, atol = TOL[x.dtype]
    err = rtol * y64.abs() + atol * math.sqrt(k)  # what y may be off by
    if oa.gated:
        half = ends[-1] // 2
        a, b = (y64[:, :half], y64[:, half:]) if oa.gate_first else (y64[:, half:], y64[:, :half])
        ea, eb = (err[:, :half], err[:, half:]) if oa.gate_first else (err[:, half:], err[:, :half])
        # |act'| <= 1.13 for silu and both gelus (relu: 1); |act(g)| <= |g|
        bound = 1.13 * b.abs() * ea + (a.abs() + ea) * eb
    else:
        bound = 1.13 * err
    want = activation_reference(y64, oa, ends)
    assert h.dtype == x.dtype and h.shape == want.shape
    assert not torch.isnan(h).any(), "unwritten (NaN-poisoned) output elements"
    excess = (h.double() - want).abs() - (bound + rtol * want.abs())
    assert excess.max().item() <= 0, f"act output off by {excess.max().item():.3g} beyond bound"
