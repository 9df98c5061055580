"""Public description of a model's sparsifiable linears: :class:`Site` and :func:`find_sites`."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .passes.detect_sites import GraphSite, detect_sites, find_attentions

log = logging.getLogger(__name__)

# every kind detect_sites can give (an attention input fused over any of q, k, v: qk, qv, kv,
# qkv), in the order tables and plots list them
KIND_ORDER = ("q", "k", "v", "qk", "qv", "kv", "qkv", "o", "gate", "up", "gate_up", "down")


@dataclass(frozen=True)
class Site:
    """One linear whose input is sparsified.

    ``name`` is the module path (``model.layers.3.mlp.down_proj``); ``kind`` one of
    ``KIND_ORDER`` (``q k v``, a fused ``qk qv kv qkv``, ``o gate up gate_up down``); ``block``
    the decoder block index (order of attention ops in the graph); ``group`` names the sites
    reading the same input tensor, which run as one launch (``block3.gate+up``).
    ``weight_layout`` is ``"out_in"`` for ``nn.Linear`` (weight [out, in]) and ``"in_out"`` for
    GPT-2's ``Conv1D`` (weight [in, out]).
    """

    name: str
    kind: str
    block: int
    group: str
    in_features: int
    out_features: int
    weight_layout: str = "out_in"

    @property
    def numel(self) -> int:
        """Weight elements: the bytes a dense matmul reads, over the element size."""
        return self.in_features * self.out_features

    def weight(self, model: nn.Module) -> torch.Tensor:
        """The site's weight as [out_features, in_features] (a view for Conv1D)."""
        w = model.get_submodule(self.name).weight
        return w.t() if self.weight_layout == "in_out" else w

    @classmethod
    def from_graph(cls, s: GraphSite) -> Site:
        """The public description of a site found in a graph."""
        lin = s.linear
        return cls(s.name, s.kind, s.block, s.group, lin.in_features, lin.out_features,
                   lin.weight_layout)  # fmt: skip


class SiteCollector:
    """A Dynamo backend that only records the sites of each graph it is given."""

    def __init__(self) -> None:
        self.sites: list[Site] = []
        self.n_attention = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, **kwargs):  # noqa: ANN001
        found = detect_sites(gm.graph, block_offset=self.n_attention)
        self.n_attention += len(find_attentions(gm.graph))
        self.sites.extend(Site.from_graph(s) for s in found)
        return gm.forward


def _example_inputs(model: nn.Module, seq_len: int) -> dict:
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None) or 32
    device = next(model.parameters()).device
    ids = torch.arange(seq_len, device=device).remainder(vocab).unsqueeze(0)
    return {"input_ids": ids, "use_cache": False}


def _sites_by_export(model: nn.Module, inputs: dict) -> list[Site]:
    """One whole-model graph from ``torch._dynamo.export``; weights are ``get_attr`` nodes,
    named here by identity with the model's own parameters."""
    with torch.no_grad():
        gm = torch._dynamo.export(model)(**inputs).graph_module
    names = {id(p): n for n, p in model.named_parameters()}
    sites = []
    for s in detect_sites(gm.graph):
        weight = getattr(gm, str(s.linear.weight.target), None) if s.linear.weight.op == (
            "get_attr") else None  # fmt: skip
        name = names.get(id(weight))
        if name is None:
            raise RuntimeError(f"cannot name the weight of {s.linear.node}")
        s.name = name.removesuffix(".weight")
        sites.append(s)
    return [Site.from_graph(s) for s in sites]


def _sites_by_compile(model: nn.Module, inputs: dict) -> list[Site]:
    """Fallback for models with graph breaks: collect the sites of every Dynamo graph."""
    collector = SiteCollector()
    compiled = torch.compile(model, backend=collector, dynamic=False)
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1024):
        compiled(**inputs)
    return collector.sites


def find_sites(model: nn.Module, example_inputs: dict | None = None) -> list[Site]:
    """Trace ``model`` with Dynamo on a short input and return its sites in graph order.

    ``example_inputs`` are keyword arguments for ``model(...)``; by default a batch of one
    8-token sequence of ``input_ids`` with the KV cache off. The model itself is not changed.
    """
    inputs = example_inputs or _example_inputs(model, 8)
    try:
        found = _sites_by_export(model, inputs)
    except Exception as err:  # noqa: BLE001 - graph breaks: trace graph by graph instead
        log.info("was: whole-graph export failed (%s); collecting sites graph by graph", err)
        found = _sites_by_compile(model, inputs)
    if not found:
        raise ValueError(
            f"no activation->linear sites found in {type(model).__name__}: was_compile "
            "recognises linears that feed attention, read the attention output, or form an MLP"
        )
    seen: dict[str, Site] = {}
    for s in found:
        seen.setdefault(s.name, s)
    return list(seen.values())


def sites_fingerprint(sites: list[Site]) -> str:
    """A short hash of site names, kinds and shapes: two models with the same one accept the
    same schedules."""
    rows = [(s.name, s.kind, s.in_features, s.out_features) for s in sites]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def site_to_dict(site: Site) -> dict:
    return asdict(site)
