"""Calibration: per-site score distributions, from which any sparsity's threshold is read.

For every site we record two distributions over (token, channel) pairs of its input x:
the weight-aware score ``|x_j| * ||W[:, j]||`` (WAS; column norm L1 by default, L2 as in
WINA) and the plain magnitude ``|x_j|`` (TEAL). Each is a histogram of log10(score) with
fixed, fine bins, so memory is bounded whatever the token count and any quantile is read
without assuming a symmetric distribution. Thresholds are quantiles of these histograms.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..sites import Site, find_sites
from .masking import masked_inputs
from .postnorm import detect_output_gains, weighted_column_norms
from .schedule_file import thresholds_from_scalar

LOG10_LO, LOG10_HI = -12.0, 6.0
N_BINS = 18_000  # 0.001 decades a bin: 0.23% relative resolution on a threshold
SCORES = ("was", "mag")


def column_norms(
    weight_out_in: torch.Tensor, norm: str = "l1", gain: torch.Tensor | None = None
) -> torch.Tensor:
    """Norm of each input column of W [out, in] (rows scaled by ``gain`` [out], the output
    norm's gain, if given) in float32: shape [in]."""
    return weighted_column_norms(weight_out_in, norm, gain)


class LogHistogram:
    """Counts of log10(values) in ``N_BINS`` bins over [1e-12, 1e6], plus under/overflow."""

    def __init__(self, device: torch.device | str = "cpu", counts: torch.Tensor | None = None):
        self.counts = (
            counts if counts is not None else torch.zeros(N_BINS + 2, dtype=torch.float64,
                                                          device=device)
        )  # fmt: skip

    def add(self, values: torch.Tensor) -> None:
        v = values.detach().float().flatten()
        logv = torch.log10(v.clamp_min(1e-30))
        idx = ((logv - LOG10_LO) * (N_BINS / (LOG10_HI - LOG10_LO))).floor().long() + 1
        idx = idx.clamp_(0, N_BINS + 1)
        # counts may live elsewhere than the values (refinement keeps them on the CPU)
        self.counts += torch.bincount(idx, minlength=N_BINS + 2).to(self.counts)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def quantile(self, q: float) -> float:
        """The value below which a fraction q of the recorded values lie (log-interpolated)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if q == 0.0:
            return 0.0
        cdf = torch.cumsum(self.counts.cpu(), 0)
        target = q * float(cdf[-1])
        i = int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64)))
        i = min(i, N_BINS + 1)
        if i == 0:
            return 10.0**LOG10_LO
        if i == N_BINS + 1:
            return 10.0**LOG10_HI
        below = float(cdf[i - 1])
        frac = (target - below) / max(float(self.counts[i]), 1e-300)
        width = (LOG10_HI - LOG10_LO) / N_BINS
        return 10.0 ** (LOG10_LO + (i - 1 + frac) * width)

    def fraction_below(self, t: float) -> float:
        """Fraction of values <= t (bin-resolution)."""
        logt = torch.log10(torch.tensor(max(t, 1e-30), dtype=torch.float64))
        i = int(((logt - LOG10_LO) * (N_BINS / (LOG10_HI - LOG10_LO))).floor()) + 1
        i = max(0, min(i, N_BINS + 1))
        return float(self.counts[: i + 1].sum()) / max(self.total, 1e-300)


@dataclass
class Calibration:
    """Score histograms and column norms of every site, and what data produced them."""

    sites: list[Site]
    norms: dict[str, torch.Tensor]
    histograms: dict[tuple[str, str], LogHistogram]
    norm: str = "l1"
    data: dict = field(default_factory=dict)
    gains: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> output gain [out]

    def score_threshold(self, name: str, sparsity: float, score: str = "was") -> float:
        """Scalar t whose score quantile is ``sparsity`` for site ``name``."""
        return self.histograms[(name, score)].quantile(sparsity)

    def channel_thresholds(self, name: str, sparsity: float, score: str = "was") -> torch.Tensor:
        """Per-channel thresholds tau [in_features] on |x| giving ``sparsity`` at this site.

        Weight-aware: tau_j = t / ||W[:, j]||. Magnitude: tau_j = t for all j.
        """
        if sparsity <= 0.0:
            return torch.zeros(self.norms[name].shape, dtype=torch.float32)
        t = self.score_threshold(name, sparsity, score)
        if score == "was":
            return thresholds_from_scalar(t, self.norms[name])
        if score == "mag":
            return torch.full(self.norms[name].shape, t, dtype=torch.float32)
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")

    def save(self, path: str | Path) -> None:
        torch.save(
            {
                "sites": [s.__dict__ for s in self.sites],
                "norms": self.norms,
                "hist": {f"{n}|{k}": h.counts.cpu() for (n, k), h in self.histograms.items()},
                "norm": self.norm,
                "data": self.data,
                "gains": self.gains,
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        doc = torch.load(str(path), weights_only=True)
        hists = {}
        for key, counts in doc["hist"].items():
            name, score = key.rsplit("|", 1)
            hists[(name, score)] = LogHistogram(counts=counts)
        return cls([Site(**s) for s in doc["sites"]], doc["norms"], hists, doc["norm"],
                   doc["data"], doc.get("gains", {}))  # fmt: skip


def _as_kwargs(batch: object) -> dict:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch}
    if isinstance(batch, dict):
        return dict(batch)
    raise TypeError(f"a calibration batch is a tensor of input_ids or a dict, got {type(batch)}")


def calibrate(
    model: nn.Module,
    batches: Iterable,
    sites: list[Site] | None = None,
    norm: str = "l1",
    source: str = "user batches",
    progress: bool = True,
    under_thresholds: dict[str, torch.Tensor] | None = None,
    output_gains: bool | dict[str, torch.Tensor] = True,
) -> Calibration:
    """Run ``model`` eagerly on ``batches`` and record every site's score histograms.

    batches: input_ids tensors [B, T] (or dicts of model kwargs). Column norms are computed
    once in float32. Memory per site is two histograms of ``N_BINS`` float64 counts.
    ``under_thresholds``: run the model sparsified with these thresholds while recording (each
    site still records its input before its own mask), so statistics include the shift that
    upstream sparsity causes; see :func:`~was_compile.schedules.refine.refine_schedule`.
    ``output_gains``: fold the gain of a normalisation applied to a site's output into its
    column norms (:mod:`~was_compile.schedules.postnorm`; True: detect them on the first
    batch, a dict: these gains [out_features] by site name, False: none).
    """
    sites = sites or find_sites(model)
    batches = list(batches)
    device = next(model.parameters()).device
    if output_gains is True:
        ids = _as_kwargs(batches[0])["input_ids"] if batches else None
        gains = detect_output_gains(model, sites, ids[:1, :16]) if ids is not None else {}
    else:
        gains = dict(output_gains or {})
    norms = {s.name: column_norms(s.weight(model), norm, gains.get(s.name)).to(device)
             for s in sites}  # fmt: skip
    hists = {(s.name, k): LogHistogram(device) for s in sites for k in SCORES}
    tokens = 0

    def hook_for(name: str):
        def hook(module, args):  # noqa: ANN001
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()
            hists[(name, "mag")].add(x)
            hists[(name, "was")].add(x * norms[name])

        return hook

    handles = [model.get_submodule(s.name).register_forward_pre_hook(hook_for(s.name))
               for s in sites]  # fmt: skip
    masks = masked_inputs(model, under_thresholds) if under_thresholds else nullcontext()
    try:
        with torch.no_grad(), masks:
            for batch in tqdm(list(batches), desc="calibrating", disable=not progress):
                kwargs = _as_kwargs(batch)
                kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                          for k, v in kwargs.items()}  # fmt: skip
                kwargs.setdefault("use_cache", False)
                model(**kwargs)
                tokens += int(kwargs["input_ids"].numel())
    finally:
        for h in handles:
            h.remove()
    norms = {n: v.cpu() for n, v in norms.items()}
    data = {"source": source, "tokens": tokens, "output_gains": sorted(gains)}
    return Calibration(sites, norms, hists, norm, data, gains)
