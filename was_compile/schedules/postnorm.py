"""Output norms of sites: gains that scale a dropped channel's error before the residual add.

Some families normalise a linear's output before adding it to the residual stream (Gemma-2/3:
``post_attention_layernorm`` after ``o_proj``, ``post_feedforward_layernorm`` after
``down_proj``; RMSNorms whose gains reach the hundreds). Dropping input channel j of such a
linear changes its output by ``-x_j W[:, j]``, and what reaches the residual stream is that
change times the norm's gain ``g`` (over the output's RMS, one number per token, the same for
every channel). The weight-aware score of that site should therefore use
``||diag(g) W[:, j]||`` instead of ``||W[:, j]||``.

Detection reads the model, not module names: one short forward pass records every site's
output tensor and every module's first input; a module whose input *is* a site's output
(the same tensor object) and that behaves as a per-token normalisation (its output does not
change when its input is scaled) is that site's output norm. Its per-channel gain is read by
probing it: for a sign vector ``s`` [out] with mean 0 and RMS 1, ``(n(s) - n(-s)) / (2 s)``
is ``g`` for RMSNorm (any gain convention, Gemma's ``1 + w`` included) and LayerNorm alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ..sites import Site


def _sign_probe(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, d] alternating +1/-1 (mean 0 for even d, RMS 1)."""
    s = torch.ones(d, dtype=torch.float32, device=device)
    s[1::2] = -1.0
    return s.reshape(1, 1, d).to(dtype)


@torch.no_grad()
def norm_gain(module: nn.Module, d: int, like: torch.Tensor) -> torch.Tensor | None:
    """Per-channel gain [d] (float32, absolute values) of ``module`` if it acts as a
    per-token normalisation of [..., d] inputs, else None.

    ``like``: a tensor whose dtype and device the probe takes.
    """
    s = _sign_probe(d, like.dtype, like.device)
    try:
        y1, y3, yn = module(s), module(3.0 * s), module(-s)
    except Exception:  # noqa: BLE001 - any module that cannot take a bare tensor is no norm
        return None
    if not all(isinstance(y, torch.Tensor) and y.shape == s.shape for y in (y1, y3, yn)):
        return None
    y1, y3, yn = y1.float(), y3.float(), yn.float()
    scale = float(y1.abs().max())
    if not scale > 0 or not torch.allclose(y1, y3, rtol=1e-2, atol=1e-3 * scale):
        return None  # not invariant to the input's scale: not a normalisation
    gain = ((y1 - yn) / (2.0 * s.float())).reshape(d).abs().detach()
    return gain if torch.isfinite(gain).all() else None


@torch.no_grad()
def detect_output_gains(
    model: nn.Module, sites: list[Site], input_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Site name -> gain [out_features] of the normalisation applied to its output, for the
    sites whose output goes straight into one (see the module docstring).

    input_ids: [B, T], a few tokens suffice (one forward pass, no gradients).
    """
    outputs: dict[int, str] = {}  # id(site output tensor) -> site name
    keep: list[torch.Tensor] = []  # keep the outputs alive so ids stay unique
    found: dict[str, nn.Module] = {}
    handles = []

    def out_hook(name: str):
        def hook(module, args, output):  # noqa: ANN001
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = name
                keep.append(output)

        return hook

    def in_hook(module, args):  # noqa: ANN001
        if args and isinstance(args[0], torch.Tensor):
            name = outputs.get(id(args[0]))
            if name is not None and name not in found:
                found[name] = module

    site_modules = {s.name for s in sites}
    for s in sites:
        handles.append(model.get_submodule(s.name).register_forward_hook(out_hook(s.name)))
    for name, mod in model.named_modules():
        if name and name not in site_modules:
            handles.append(mod.register_forward_pre_hook(in_hook))
    device = next(model.parameters()).device
    try:
        model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    by_name = {s.name: s for s in sites}
    like = next(model.parameters())
    gains = {}
    for name, mod in found.items():
        g = norm_gain(mod, by_name[name].out_features, like)
        if g is not None:
            gains[name] = g.cpu()
    return gains


def weighted_column_norms(
    weight_out_in: torch.Tensor, norm: str = "l1", gain: torch.Tensor | None = None
) -> torch.Tensor:
    """Norm of each input column of ``diag(gain) W`` (W [out, in], gain [out]): shape [in]."""
    w = weight_out_in.detach().float()
    if gain is not None:
        w = w * gain.to(device=w.device, dtype=torch.float32)[:, None]
    if norm == "l1":
        return w.abs().sum(dim=0)
    if norm == "l2":
        return w.pow(2).sum(dim=0).sqrt()
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
