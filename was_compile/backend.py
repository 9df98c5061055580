"""The ``was`` torch.compile backend.

``torch.compile(model, backend="was", options={"schedule": schedule})``: find the sites of
each Dynamo graph, check them against the schedule, rewrite the sparsified groups into
``torch.ops.was.sparse_linear`` and hand the graph to Inductor (or run it eagerly).

Weights are re-laid out in place the first time a graph is seen (see
``passes/weight_layout.py``). That changes the parameters' strides, which Dynamo guards on
(and checks right after the backend returns), so the layout happens on the first *call* of
what the backend returns, which then runs the graph eagerly; Dynamo re-traces once on the
next call, with the weights in place. :func:`prepare` before ``torch.compile`` skips this.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import fx

from .errors import InferenceOnlyError, ScheduleMismatchError
from .kernels.ops import reserve_decode_workspace
from .options import WasOptions
from .passes.detect_sites import GraphSite, detect_sites, find_attentions
from .passes.fuse_output_activation import fuse_output_activation
from .passes.rewrite_sparse_linear import GroupPlan, rewrite_sparse_linear
from .passes.weight_layout import is_laid_out, lay_out_group
from .schedules.schedule_file import Schedule, byte_weighted_sparsity
from .sites import Site

log = logging.getLogger(__name__)


_LAST_STATS: dict = {}
_GRAPHS_SEEN = [0]


def last_compile_stats() -> dict:
    """Counts from the most recent graph the backend compiled (sites found, rewritten, ...)
    and ``graphs``, how many graphs the backend has been given in this process."""
    return {**_LAST_STATS, "graphs": _GRAPHS_SEEN[0]}


def _placeholder_values(gm: fx.GraphModule, example_inputs: list) -> dict[fx.Node, object]:
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return dict(zip(phs, example_inputs))


def _check_inference(example_inputs: list) -> None:
    if torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs
    ):
        raise InferenceOnlyError(
            "the 'was' backend is inference-only and gradients are enabled: call the compiled "
            "model under torch.no_grad() or torch.inference_mode() (generate() does), or "
            "model.requires_grad_(False)"
        )


def _check_schedule(sites: list[GraphSite], schedule: Schedule) -> None:
    if sites and not any(s.name in schedule.site_map for s in sites):
        raise ScheduleMismatchError(
            f"schedule does not fit this model: none of its sites are in the compiled graph "
            f"(first graph site {sites[0].name!r}, first schedule site "
            f"{schedule.sites[0].name!r}; schedule fingerprint "
            f"{schedule.meta.get('fingerprint')})"
        )
    schedule.check_fits([Site.from_graph(s) for s in sites])


def _sparse_groups(sites: list[GraphSite], schedule: Schedule) -> list[list[GraphSite]]:
    """Groups with any sparsified member (a sparsity-0 group stays the plain dense linear)."""
    groups: dict[str, list[GraphSite]] = {}
    for s in sites:
        groups.setdefault(s.group, []).append(s)
    return [
        members for members in groups.values()
        if any(schedule.sparsity.get(m.name, 0.0) > 0.0 for m in members)
    ]  # fmt: skip


def _group_plans(
    groups: list[list[GraphSite]],
    schedule: Schedule,
    values: dict[fx.Node, object],
    dry_run: bool,
) -> tuple[list[GroupPlan], bool]:
    """Plans for ``groups``; with ``dry_run`` only tell whether a re-layout is needed."""
    plans, relaid = [], False
    for members in groups:
        weights = [values[m.linear.weight] for m in members]
        biases = [values.get(m.linear.bias) if m.linear.bias is not None else None
                  for m in members]  # fmt: skip
        if any(not isinstance(w, torch.Tensor) for w in weights):
            raise ScheduleMismatchError(f"weights of group {members[0].group} are not tensors")
        layouts = [m.linear.weight_layout for m in members]
        if dry_run:
            relaid |= not is_laid_out(weights, layouts)
            continue
        gw, changed = lay_out_group(weights, layouts, biases)
        relaid |= changed
        taus = torch.stack([schedule.thresholds[m.name].float() for m in members])
        hint = byte_weighted_sparsity([Site.from_graph(m) for m in members], schedule.sparsity)
        plans.append(GroupPlan(members, gw, taus.to(gw.weight_t.device), hint))
    return plans, relaid


class _LayOutThenRunEagerly:
    """What the backend returns for a graph whose weights are not laid out yet: on the first
    call (after Dynamo has checked its guards) lay them out and rewrite the graph, then run
    it eagerly. Dynamo re-traces on the next call and compiles for real."""

    def __init__(self, gm: fx.GraphModule, groups, values, opts: WasOptions) -> None:  # noqa: ANN001
        self.gm, self.groups, self.values, self.opts = gm, groups, values, opts
        self.ready = False

    def __call__(self, *args):  # noqa: ANN002
        if not self.ready:
            with torch.no_grad():
                plans, _ = _group_plans(self.groups, self.opts.schedule, self.values, False)
            _rewrite(self.gm, plans, self.opts)
            self.values, self.ready = None, True
        return self.gm.forward(*args)


def _rewrite(gm: fx.GraphModule, plans: list[GroupPlan], opts: WasOptions) -> int:
    n = rewrite_sparse_linear(
        gm, plans, sparse_prefill=opts.prefill == "sparse", max_decode_rows=opts.max_decode_rows
    )
    _LAST_STATS["activations"] = fuse_output_activation(gm) if opts.fuse_activation else 0
    schedule = opts.schedule
    for plan in plans:
        # before any CUDA-graph warm-up or capture: the kernel's split-K workspace
        ends = [b for _, b in plan.weights.columns]
        reserve_decode_workspace(plan.weights.weight_t, ends, opts.max_decode_rows)
        schedule.compiled_groups.append(
            (weakref.ref(plan.thresholds), [m.name for m in plan.members])
        )
    return n


def was_backend(gm: fx.GraphModule, example_inputs: list, **kwargs) -> object:
    """The Dynamo backend: ``(gm, example_inputs, mode=..., options=...) -> callable``."""
    _GRAPHS_SEEN[0] += 1
    opts = WasOptions.parse(kwargs.get("options"))
    _check_inference(example_inputs)
    sites = detect_sites(gm.graph)
    _check_schedule(sites, opts.schedule)
    values = _placeholder_values(gm, example_inputs)
    groups = _sparse_groups(sites, opts.schedule)
    opts.schedule.compiled_dense.update(s.name for s in sites if all(s not in g for g in groups))
    _, needs_layout = _group_plans(groups, opts.schedule, values, dry_run=True)
    _LAST_STATS.clear()
    _LAST_STATS.update(sites=len(sites), attention=len(find_attentions(gm.graph)),
                       relaid=needs_layout, rewritten=0, activations=0)  # fmt: skip
    if needs_layout:
        log.info("was: weights are re-laid out on this call; Dynamo re-traces once after it")
        return _LayOutThenRunEagerly(gm, groups, values, opts)
    with torch.no_grad():
        plans, _ = _group_plans(groups, opts.schedule, values, dry_run=False)
    _LAST_STATS["rewritten"] = _rewrite(gm, plans, opts)
    if opts.compiler == "eager":
        return gm.forward
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    mode = opts.mode or kwargs.get("mode") or "default"
    patches = {**list_mode_options(mode), **opts.inductor_config}
    return compile_fx(gm, example_inputs, config_patches=patches)


def prepare(model: torch.nn.Module, schedule: Schedule) -> torch.nn.Module:
    """Lay out the weights of ``schedule``'s sparsified groups in place before compiling,
    so ``torch.compile`` traces once. Returns ``model``."""
    groups: dict[str, list[Site]] = {}
    for s in schedule.sites:
        groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        if all(schedule.sparsity.get(m.name, 0.0) <= 0.0 for m in members):
            continue
        mods = [model.get_submodule(m.name) for m in members]
        lay_out_group([m.weight for m in mods], [s.weight_layout for s in members],
                      [getattr(m, "bias", None) for m in mods])  # fmt: skip
    return model
