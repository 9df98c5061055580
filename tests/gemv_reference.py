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
