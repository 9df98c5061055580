"""Greedy allocation of sparsity among the components of each decoder block.

Each block starts dense. At every step one component (a site: q, k, v, o, gate, up, down,
or a fused qkv / gate_up) gets one more step of sparsity; the step of component i is
``min(base_step * block_numel / (n_components * numel_i), max_step)``, so every step skips
about the same number of weight bytes, except that a small component (k and v of a
grouped-query model) never jumps by more than ``max_step`` of its own channels at once
(uncapped, k/v of Gemma-3-270M went 0 -> 98% in one step). The component chosen is the one
whose step raises the block's output error least per weight byte skipped (the same as "least"
when the steps are equal in bytes), measured by re-running only that block on saved dense
inputs with its sites masked (:func:`~was_compile.schedules.masking.masked_inputs`) and
comparing with the dense block output over the last tokens of each sequence.

The whole trajectory (per-component sparsities and the byte-weighted block sparsity after
every step) is kept up to ``max_block_sparsity``, so the per-site sparsities of any block
budget are a lookup, interpolated linearly between two steps: the byte-weighted mean is
linear in the per-site sparsities, so the interpolated point meets the budget exactly.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_map_only
from tqdm.auto import tqdm

from ..sites import Site
from .calibration import Calibration, _as_kwargs
from .masking import masked_inputs

FORMAT_VERSION = 1


@dataclass
class BlockTrajectory:
    """The greedy path of one block.

    ``sites``/``numel``: the block's components (site names) and weight elements.
    ``sparsity[k]``: per-component sparsity after step k (step 0 is all dense).
    ``block_sparsity[k]``: byte-weighted block sparsity after step k (strictly increasing).
    ``error[k]``: relative squared L2 error of the block output after step k.
    ``cap``: the largest sparsity a component may take; beyond the last step, the lookup
    moves linearly towards every component at ``cap``.
    """

    block: int
    sites: list[str]
    numel: list[int]
    sparsity: list[list[float]]
    block_sparsity: list[float]
    error: list[float]
    cap: float = 0.98

    def lookup(self, target: float) -> dict[str, float]:
        """Per-site sparsities whose byte-weighted block mean is ``target`` (a fraction)."""
        if not 0.0 <= target <= self.cap:
            raise ValueError(
                f"block {self.block}: sparsity {target} outside [0, {self.cap}] (the cap of "
                "every component)"
            )
        bs = self.block_sparsity
        if target >= bs[-1]:
            lo_v, hi_v = self.sparsity[-1], [self.cap] * len(self.sites)
            lo_b, hi_b = bs[-1], self.cap
        else:
            k = bisect.bisect_right(bs, target) - 1
            lo_v, hi_v, lo_b, hi_b = self.sparsity[k], self.sparsity[k + 1], bs[k], bs[k + 1]
        w = 0.0 if hi_b <= lo_b else (target - lo_b) / (hi_b - lo_b)
        return {n: (1.0 - w) * a + w * b for n, a, b in zip(self.sites, lo_v, hi_v)}

    @property
    def total_numel(self) -> int:
        return sum(self.numel)


@dataclass
class GreedyTrajectories:
    """Greedy trajectories of every block of one model, for one score (``was`` or ``mag``)."""

    blocks: dict[int, BlockTrajectory]
    score: str
    meta: dict = field(default_factory=dict)

    def block_sparsities(self, block: int, target: float) -> dict[str, float]:
        """Site name -> sparsity for ``block`` at byte-weighted block sparsity ``target``."""
        if block not in self.blocks:
            raise KeyError(f"no greedy trajectory for block {block}; have {sorted(self.blocks)}")
        return self.blocks[block].lookup(target)

    def sparsities(self, per_block: dict[int, float]) -> dict[str, float]:
        """Site name -> sparsity for a budget per block (blocks not named stay dense)."""
        out: dict[str, float] = {}
        for b, traj in self.blocks.items():
            out.update(traj.lookup(per_block.get(b, 0.0)))
        return out

    def block_numels(self) -> dict[int, int]:
        """Block index -> weight elements of its sites."""
        return {b: t.total_numel for b, t in self.blocks.items()}

    def max_sparsity(self) -> float:
        """The largest block sparsity every block can reach (the smallest cap)."""
        return min(t.cap for t in self.blocks.values())

    def save(self, path: str | Path) -> Path:
        """Write the trajectories as JSON."""
        doc = {
            "format_version": FORMAT_VERSION,
            "score": self.score,
            "meta": self.meta,
            "blocks": [t.__dict__ for t in self.blocks.values()],
        }
        path = Path(path)
        path.write_text(json.dumps(doc))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GreedyTrajectories:
        """Read trajectories written by :meth:`save`."""
        doc = json.loads(Path(path).read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: greedy format {doc.get('format_version')} unsupported")
        blocks = {int(t["block"]): BlockTrajectory(**t) for t in doc["blocks"]}
        return cls(blocks, doc["score"], doc.get("meta", {}))


def sites_by_block(sites: list[Site]) -> dict[int, list[Site]]:
    """Block index -> that block's sites, in site order."""
    out: dict[int, list[Site]] = {}
    for s in sites:
        out.setdefault(s.block, []).append(s)
    return out


def block_module_names(sites: list[Site]) -> dict[int, str]:
    """Block index -> module path of the deepest common ancestor of the block's sites.

    For ``model.layers.3.self_attn.q_proj`` ... ``model.layers.3.mlp.down_proj`` this is
    ``model.layers.3``; it is always a strict ancestor of every site ("" is the root).
    """
    out = {}
    for b, group in sites_by_block(sites).items():
        paths = [s.name.split(".")[:-1] for s in group]
        common = []
        for parts in zip(*paths):
            if any(p != parts[0] for p in parts):
                break
            common.append(parts[0])
        out[b] = ".".join(common)
    return out


@dataclass
class BlockCall:
    """One captured call of a block: its (detached) arguments and its dense output.

    ``output`` is the block's hidden-state output, [B, T, H] for decoder blocks.
    """

    args: tuple
    kwargs: dict
    output: torch.Tensor


def _first_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        return _first_tensor(out[0])
    raise TypeError(f"cannot find the hidden states in a block output of type {type(out)}")


def _detached(tree: object) -> object:
    return tree_map_only(torch.Tensor, lambda t: t.detach().clone(), tree)


def greedy_input_ids(batches: Iterable, max_tokens: int) -> torch.Tensor:
    """Rows of ``batches`` (input_ids [B, T]) as one [n, T'] batch of at most ``max_tokens``.

    T' is the shortest row length, capped at ``max_tokens``; n = max(1, min(rows available,
    max_tokens // T')).
    """
    rows: list[torch.Tensor] = []
    for batch in batches:
        ids = _as_kwargs(batch)["input_ids"]
        rows.extend(ids.reshape(-1, ids.shape[-1]))
    if not rows:
        raise ValueError("greedy needs at least one calibration batch of input_ids")
    length = min(min(r.shape[0] for r in rows), max_tokens)
    n = max(1, min(len(rows), max_tokens // length))
    return torch.stack([r[:length] for r in rows[:n]])


def capture_block_calls(
    model: nn.Module, module_names: dict[int, str], input_ids: torch.Tensor
) -> dict[int, list[BlockCall]]:
    """Run ``model`` densely on ``input_ids`` [n, T] and keep every block's call and output."""
    calls: dict[int, list[BlockCall]] = {b: [] for b in module_names}
    handles = []

    def hook_for(b: int):
        def hook(module, args, kwargs, output):  # noqa: ANN001
            out = _first_tensor(output).detach().clone()
            calls[b].append(BlockCall(_detached(args), _detached(kwargs), out))

        return hook

    for b, name in module_names.items():
        mod = model.get_submodule(name)
        handles.append(mod.register_forward_hook(hook_for(b), with_kwargs=True))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [b for b, c in calls.items() if not c]
    if missing:
        raise RuntimeError(f"blocks {missing} were not called in a forward pass")
    return calls


class BlockErrorMeter:
    """Relative squared L2 error of one block's output with its sites masked.

    ``per_token`` (default): the mean over tokens of ``|y_t - y_dense_t|^2 / |y_dense_t|^2``,
    each token's error relative to its own output norm, as the next block reads it (after an
    RMSNorm). Otherwise ``sum((y - y_dense)^2) / sum(y_dense^2)``, in which tokens with
    massive residual norms (the first token of Gemma, an attention sink) dominate both sums.
    Measured over the last ``n_last`` positions of every captured call's output [B, T, H]
    (all positions for outputs of other ranks).
    """

    def __init__(
        self,
        model: nn.Module,
        block_name: str,
        calls: list[BlockCall],
        n_last: int,
        per_token: bool = True,
    ):
        self.model = model
        self.block = model.get_submodule(block_name)
        self.calls = calls
        self.n_last = n_last
        self.per_token = per_token
        self.dense = [self._tail(c.output).float() for c in calls]
        if per_token:
            self.inv = [1.0 / d.pow(2).sum(-1).clamp_min(1e-30) for d in self.dense]
            self.norm = float(sum(i.numel() for i in self.inv)) or 1.0
        else:
            self.norm = sum(float(d.pow(2).sum()) for d in self.dense) or 1.0

    def _tail(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, -self.n_last :] if y.dim() == 3 else y

    @torch.no_grad()
    def __call__(self, thresholds: dict[str, torch.Tensor]) -> float:
        err = 0.0
        with masked_inputs(self.model, thresholds):
            for k, (call, dense) in enumerate(zip(self.calls, self.dense)):
                y = self._tail(_first_tensor(self.block(*call.args, **call.kwargs))).float()
                d2 = (y - dense).pow(2)
                err += (
                    float((d2.sum(-1) * self.inv[k]).sum()) if self.per_token else float(d2.sum())
                )
        return err / self.norm


def greedy_block(
    meter: BlockErrorMeter,
    calibration: Calibration,
    sites: list[Site],
    score: str,
    base_step: float = 0.1,
    max_block_sparsity: float = 0.9,
    cap: float = 0.98,
    lazy: bool = False,
    max_step: float = 0.15,
) -> BlockTrajectory:
    """The greedy trajectory of one block (see the module docstring).

    ``lazy``: instead of measuring every component's step at every step, keep each
    component's last measured error *increase* and re-measure only the most promising one
    until the best is fresh (Minoux's lazy greedy). Exact when a step's increase never
    shrinks as other components get sparser; about ``n_components`` times fewer block
    forwards. Ties go to the component listed first.
    """
    names = [s.name for s in sites]
    numel = [s.numel for s in sites]
    total = float(sum(numel))
    steps = [min(base_step * total / (len(sites) * n), max_step) for n in numel]
    cache: dict[tuple[str, float], torch.Tensor] = {}

    def tau(name: str, s: float) -> torch.Tensor:
        key = (name, round(s, 12))
        if key not in cache:
            cache[key] = calibration.channel_thresholds(name, s, score)
        return cache[key]

    def block_mean(v: list[float]) -> float:
        return sum(a * n for a, n in zip(v, numel)) / total

    def candidate(i: int) -> list[float]:
        cand = list(state)
        cand[i] = min(state[i] + steps[i], cap)
        return cand

    def measure(i: int) -> float:
        return meter({n: tau(n, s) for n, s in zip(names, candidate(i)) if s > 0.0})

    def per_byte(i: int, err: float) -> float:
        """Error increase of component i's step per fraction of the block's bytes skipped."""
        return (err - current) * total / max((candidate(i)[i] - state[i]) * numel[i], 1e-12)

    state = [0.0] * len(sites)
    traj = BlockTrajectory(sites[0].block, names, numel, [list(state)], [0.0], [0.0], cap)
    increase: dict[int, float] = {}  # lazy: last measured error increase (per byte) of each step
    measured: dict[int, float] = {}  # lazy: the error those increases were measured at
    fresh: set[int] = set()  # lazy: components measured at the current state
    while traj.block_sparsity[-1] < max_block_sparsity:
        open_ = [i for i in range(len(sites)) if state[i] < cap]
        if not open_:
            break
        current = traj.error[-1]
        if not lazy:
            errors = {i: measure(i) for i in open_}
            best = min(open_, key=lambda i: (per_byte(i, errors[i]), i))
            err = errors[best]
        else:
            while True:
                for i in open_:
                    if i not in increase:
                        measured[i] = measure(i)
                        increase[i] = per_byte(i, measured[i])
                        fresh.add(i)
                best = min(open_, key=lambda i: (increase[i], i))
                if best in fresh:
                    break
                measured[best] = measure(best)
                increase[best] = per_byte(best, measured[best])
                fresh.add(best)
            err = measured[best]
            fresh.clear()
        state = candidate(best)
        traj.sparsity.append(list(state))
        traj.block_sparsity.append(block_mean(state))
        traj.error.append(err)
    return traj


def greedy_trajectories(
    model: nn.Module,
    calibration: Calibration,
    batches: Iterable,
    score: str = "was",
    base_step: float = 0.1,
    max_block_sparsity: float = 0.9,
    max_tokens: int = 512,
    error_fraction: float = 0.5,
    cap: float = 0.98,
    lazy: bool = False,
    max_step: float = 0.15,
    per_token: bool = True,
    progress: bool = True,
) -> GreedyTrajectories:
    """Greedy trajectories of every block of ``model``.

    batches: input_ids tensors [B, T] (or dicts with ``input_ids``), normally the
    calibration batches; at most ``max_tokens`` tokens are kept (see
    :func:`greedy_input_ids`) and the error is measured on the last ``error_fraction`` of
    each sequence. ``score``: ``"was"`` (weight-aware) or ``"mag"`` (TEAL) thresholds.
    ``max_step``: the largest sparsity step of one component (a fraction of its channels).
    ``per_token``: the error is each token's relative error, averaged (see
    :class:`BlockErrorMeter`). Sparsify every token at run time (prefill included)? Then
    measure on every token: ``error_fraction=1.0``.
    Cost: about ``n_components**2 * max_block_sparsity / base_step`` block forwards a block
    (``lazy``: about ``n_components * max_block_sparsity / base_step`` times 1-3).
    """
    if score not in ("was", "mag"):
        raise ValueError(f"score must be 'was' or 'mag', got {score!r}")
    if not 0.0 < base_step <= 0.5:
        raise ValueError(f"base_step is a fraction in (0, 0.5], got {base_step}")
    if not 0.0 < max_block_sparsity < cap <= 1.0:
        raise ValueError(f"need 0 < max_block_sparsity ({max_block_sparsity}) < cap ({cap}) <= 1")
    if not 0.0 < max_step <= 1.0:
        raise ValueError(f"max_step is a fraction in (0, 1], got {max_step}")
    sites = calibration.sites
    module_names = block_module_names(sites)
    ids = greedy_input_ids(batches, max_tokens)
    n_last = max(1, round(ids.shape[1] * error_fraction))
    was_training = model.training
    model.eval()
    try:
        calls = capture_block_calls(model, module_names, ids)
        blocks = {}
        groups = sites_by_block(sites)
        for b in tqdm(sorted(groups), desc=f"greedy ({score})", disable=not progress):
            meter = BlockErrorMeter(model, module_names[b], calls[b], n_last, per_token)
            blocks[b] = greedy_block(
                meter,
                calibration,
                groups[b],
                score,
                base_step,
                max_block_sparsity,
                cap,
                lazy,
                max_step,
            )
            del meter
    finally:
        model.train(was_training)
    meta = {
        "base_step": base_step,
        "max_block_sparsity": max_block_sparsity,
        "lazy": lazy,
        "max_step": max_step,
        "per_token_error": per_token,
        "error_fraction": error_fraction,
        "sequences": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "error_tokens_per_sequence": n_last,
        "calibration": calibration.data,
    }
    return GreedyTrajectories(blocks, score, meta)
