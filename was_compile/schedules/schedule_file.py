"""The schedule: per-site sparsity and threshold vectors, the file the backend loads.

On disk a schedule is a folder with ``schedule.json`` (metadata, sites, per-site sparsity)
and ``thresholds.safetensors`` (one fp32 vector [in_features] per site).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ScheduleMismatchError
from ..sites import KIND_ORDER, Site, sites_fingerprint
from ..version import __version__

FORMAT_VERSION = 1


def byte_weighted_sparsity(sites: list[Site], sparsity: dict[str, float]) -> float:
    """Fraction of the sites' weight bytes skipped: sum(s_i * numel_i) / sum(numel_i)."""
    total = sum(s.numel for s in sites)
    return sum(sparsity.get(s.name, 0.0) * s.numel for s in sites) / total if total else 0.0


@dataclass
class Schedule:
    """Per-site target sparsity and per-channel thresholds for one model.

    ``thresholds[name]`` is a float32 tensor [in_features]: channel j of the site's input is
    kept where ``|x_j| > thresholds[name][j]``. ``meta`` holds the method, budget, calibration
    description, fingerprint and library version.
    """

    sites: list[Site]
    sparsity: dict[str, float]
    thresholds: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    # Threshold buffers [S, K] of graphs compiled from this schedule, with their site names
    # and the sites they run dense: what update_() writes into.
    compiled_groups: list = field(default_factory=list, repr=False, compare=False)
    compiled_dense: set = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        for s in self.sites:
            if s.name not in self.thresholds:
                raise ValueError(f"schedule has no thresholds for site {s.name}")
            tau = self.thresholds[s.name]
            if tau.shape != (s.in_features,):
                raise ValueError(
                    f"thresholds of {s.name} have shape {tuple(tau.shape)}, "
                    f"expected ({s.in_features},)"
                )
        self.meta.setdefault("fingerprint", sites_fingerprint(self.sites))
        self.meta["achieved_sparsity"] = self.achieved_sparsity()
        self.meta.setdefault("library_version", __version__)

    @property
    def site_map(self) -> dict[str, Site]:
        return {s.name: s for s in self.sites}

    def achieved_sparsity(self) -> float:
        """Byte-weighted mean sparsity over all sites (the budget it meets)."""
        return byte_weighted_sparsity(self.sites, self.sparsity)

    def check_fits(self, sites: list[Site]) -> None:
        """Raise :class:`ScheduleMismatchError` naming the first difference with ``sites``."""
        mine = self.site_map
        for s in sites:
            if s.name not in mine:
                close = ", ".join(list(mine)[:3])
                raise ScheduleMismatchError(
                    f"schedule does not fit this model: it has no site {s.name!r} "
                    f"(its sites start with {close}). Make a schedule for this model with "
                    "was_compile.calibrate + make_schedule, or `was search`."
                )
            m = mine[s.name]
            if (m.in_features, m.out_features) != (s.in_features, s.out_features):
                raise ScheduleMismatchError(
                    f"schedule does not fit this model: site {s.name} is "
                    f"{s.in_features}->{s.out_features} in the model but "
                    f"{m.in_features}->{m.out_features} in the schedule "
                    f"(made for fingerprint {self.meta.get('fingerprint')})"
                )

    def update_(self, other: Schedule) -> int:
        """Take ``other``'s sparsities and thresholds in place; return the threshold rows
        written into compiled graphs.

        Graphs compiled from this schedule see the new thresholds at their next call, with no
        recompile (and graphs compiled later use them too). A site compiled dense (sparsity 0)
        that ``other`` sparsifies needs a new compile: that raises, changing nothing.
        """
        other.check_fits(self.sites)
        newly_sparse = [n for n in self.compiled_dense if other.sparsity.get(n, 0.0) > 0.0]
        if newly_sparse:
            raise ScheduleMismatchError(
                f"site {newly_sparse[0]} was compiled dense (sparsity 0) and the new schedule "
                "sparsifies it: call torch._dynamo.reset() and compile with the new schedule"
            )
        for name, tau in self.thresholds.items():
            tau.copy_(other.thresholds[name])
        self.sparsity = dict(other.sparsity)
        self.meta = {**other.meta}
        written = 0
        for ref, names in self.compiled_groups:
            buf = ref()
            if buf is None:
                continue
            for row, name in enumerate(names):
                buf[row].copy_(other.thresholds[name].to(buf.device))
                written += 1
        return written

    def save(self, path: str | Path) -> Path:
        """Write ``path/schedule.json`` and ``path/thresholds.safetensors``; return ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.detach().to("cpu", torch.float32).contiguous()
                   for n, t in self.thresholds.items()}  # fmt: skip
        save_file(tensors, str(path / "thresholds.safetensors"))
        doc = {
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
            "sites": [
                {**s.__dict__, "sparsity": self.sparsity.get(s.name, 0.0)} for s in self.sites
            ],
        }
        (path / "schedule.json").write_text(json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a schedule folder written by :meth:`save`."""
        path = Path(path)
        meta_file = path / "schedule.json"
        if not meta_file.exists():
            raise FileNotFoundError(
                f"{meta_file} not found: a schedule is a folder written by Schedule.save() "
                "or `was search`"
            )
        doc = json.loads(meta_file.read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: schedule format {doc.get('format_version')} unsupported")
        sites, sparsity = [], {}
        for row in doc["sites"]:
            sparsity[row["name"]] = float(row.pop("sparsity"))
            sites.append(Site(**row))
        thresholds = load_file(str(path / "thresholds.safetensors"))
        return cls(sites, sparsity, thresholds, doc["meta"])

    def table(self) -> str:
        """Per-block, per-kind sparsity in percent, as a text table."""
        kinds = [k for k in KIND_ORDER if any(s.kind == k for s in self.sites)]
        blocks = sorted({s.block for s in self.sites})
        grid = {(s.block, s.kind): self.sparsity.get(s.name, 0.0) for s in self.sites}
        head = f"{'block':>5} " + " ".join(f"{k:>7}" for k in kinds) + f" {'bytes':>7}"
        lines = [head]
        for b in blocks:
            bs = [s for s in self.sites if s.block == b]
            mean = byte_weighted_sparsity(bs, self.sparsity)
            cells = " ".join(
                f"{100 * grid[(b, k)]:7.1f}" if (b, k) in grid else f"{'-':>7}" for k in kinds
            )
            lines.append(f"{b:>5} {cells} {100 * mean:7.1f}")
        lines.append(f"byte-weighted sparsity: {100 * self.achieved_sparsity():.2f}%")
        return "\n".join(lines)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Schedule(method={m.get('method')!r}, budget={m.get('budget')}, "
            f"achieved={self.achieved_sparsity():.4f}, sites={len(self.sites)})"
        )


def thresholds_from_scalar(t: float, norms: torch.Tensor) -> torch.Tensor:
    """tau_j = t / norm_j (inf where a column is all zero: that channel is always dropped)."""
    if t <= 0 or math.isnan(t):
        return torch.zeros_like(norms, dtype=torch.float32)
    return (t / norms.double()).to(torch.float32)
