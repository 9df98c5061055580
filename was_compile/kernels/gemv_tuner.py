"""Choosing the sparse GEMV's config for a tuning key by timing its candidates as decode runs them.

Why not ``triton.autotune``: it times one call over and over on the same arguments, each after
``do_bench``'s 256 MB memset. The memset leaves L2 full of dirty lines that the timed call
writes back while it reads its weights, and the ranking that comes out is not the ranking in
a decode step: on the H100, from the same candidate lists, its picks at M = 2-4 ran up to 14%
slower than this tuner's (benchmarks/kernel_notes.md section 11), and a clean L2 eviction
before each call (the operands cold, the split-K workspace too, unlike decode) picked worse
still at M = 1 (up to 2.6x). So each candidate is timed here with ``graph_timing.sequence_ms``, the
protocol of ``benchmarks/kernels.py``: calls back to back in one CUDA graph, each on its own
copy of the weight (random values of the weight's shape and dtype: the time does not depend
on them), with the call's own x and thresholds (its real sparsity pattern), no flush.

Cache: ``$WAS_CACHE_DIR/gemv_configs.json`` (default ``~/.cache/was_compile``), one entry per
GPU name, hash of the kernel sources, dtype, K, segment ends, M bucket, sparsity bucket and
reduction, holding the chosen config and every candidate's time. A second process, or a
second model with the same shapes, starts with no timing runs. Tuning needs a CUDA graph
capture of its own, so it never runs while a stream is capturing: a call that would tune
there runs the pruner's first candidate instead (and stores nothing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .graph_timing import copies_for, l2_bytes, sequence_ms
from .switch_points import table_path

__all__ = [
    "cache_path", "tuning_key", "weight_copies", "choose_config", "config_dict", "capturing",
    "sequence_timer",
]  # fmt: skip

_LOCK = threading.Lock()
_MEMO: dict[str, dict] = {}  # key -> entry, this process (disk entries merged on first use)
_LOADED: set[Path] = set()
_SOURCES = ("triton_sparse_gemv.py", "fma_wide.py", "gemv_rows.py", "splitk.py",
            "autotune_configs.py")  # fmt: skip


def cache_path() -> Path:
    """``$WAS_CACHE_DIR/gemv_configs.json`` (the directory of the switch-point table)."""
    return table_path().parent / "gemv_configs.json"


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """Hash of the kernel and config-space sources: an entry tuned for other code is ignored."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def tuning_key(device_name: str, dtype: torch.dtype, k: int, ends: Sequence[int], mb: int,
               sb: int, atomic: bool) -> str:  # fmt: skip
    """Cache key of one tuning problem (what decides the candidates and their times)."""
    dt = str(dtype).replace("torch.", "")
    red = "atomic" if atomic else "ordered"
    return (f"{device_name}|{_source_hash()}|{dt}|K={k}|ends={','.join(map(str, ends))}"
            f"|M{mb}|S{sb}|{red}")  # fmt: skip


def config_dict(cfg) -> dict:
    """A ``triton.Config`` (or a dict) as the explicit ``config=`` of ``sparse_gemv``."""
    if isinstance(cfg, dict):
        return dict(cfg)
    out = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if getattr(cfg, "maxnreg", None):
        out["maxnreg"] = cfg.maxnreg
    return out


def weight_copies(weight_t: torch.Tensor) -> list[torch.Tensor]:
    """``weight_t`` and random copies of it, together at least three times the L2 size, at
    least two and at most 64 (a tiny weight stays in L2 whatever is done): no timed call
    finds its weights in L2. At most one extra weight or ~150 MB on an H100, freed when
    tuning ends (peak memory of the first call grows by that much)."""
    need = copies_for(weight_t.nbytes, l2_bytes(weight_t.device), min_copies=2)
    k = weight_t.shape[0]
    out = [weight_t]
    for _ in range(need - 1):
        out.append(torch.empty_like(weight_t).normal_(0.0, k**-0.5))
    return out


def _load(path: Path) -> None:
    if path in _LOADED:
        return
    _LOADED.add(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable GEMV tuning cache {path}: {e}", stacklevel=3)
        return
    for key, entry in data.items():
        _MEMO.setdefault(key, entry)


def _save(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: keep the result for this process only
        warnings.warn(f"could not write the GEMV tuning cache {path}: {e}", stacklevel=3)


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def lookup(key: str) -> dict | None:
    """The cached entry {config, us, timed} of a key, from this process or the disk cache."""
    with _LOCK:
        _load(cache_path())
        return _MEMO.get(key)


def choose_config(key: str, candidates: Sequence, time_ms: Callable[[dict], float],
                  refine: Callable[[list], list] | None = None) -> dict:  # fmt: skip
    """The config of ``key``: from the cache, else the fastest of ``candidates`` (triton
    Configs or dicts) by ``time_ms(config dict)`` (milliseconds per call), stored on disk.
    ``refine(ranked)``: given the timed configs, fastest first, variants of some of them
    (e.g. register caps), timed next; the fastest of all is kept.

    A candidate whose timing raises (e.g. out of shared memory on this GPU) is skipped and
    recorded as failed; if all fail, the error of the first is raised. While the current
    stream is capturing a CUDA graph nothing is timed: the first candidate is returned."""
    entry = lookup(key)
    if entry is not None:
        return dict(entry["config"])
    cands = [config_dict(c) for c in candidates]
    if not cands:
        raise ValueError(f"no sparse GEMV candidate config for {key}")
    if len(cands) == 1 or capturing():
        return cands[0]
    timed: list[dict] = []
    first_error = _time_all(cands, time_ms, timed)
    ok = [t for t in timed if t["us"] is not None]
    if not ok:
        raise RuntimeError(f"every sparse GEMV candidate failed for {key}") from first_error
    best = min(ok, key=lambda t: t["us"])
    if refine is not None:
        ranked = [t["config"] for t in sorted(ok, key=lambda t: t["us"])]
        _time_all([config_dict(c) for c in refine(ranked)], time_ms, timed)
        best = min((t for t in timed if t["us"] is not None), key=lambda t: t["us"])
    entry = {"config": best["config"], "us": best["us"], "timed": timed}
    with _LOCK:
        _MEMO[key] = entry
        _save(cache_path(), key, entry)
    return dict(best["config"])


def _time_all(cands: list[dict], time_ms: Callable[[dict], float], timed: list) -> Exception | None:
    """Append {config, us} (or {config, us: None, error}) of each config to ``timed``;
    returns the first error raised, if any."""
    first_error = None
    for cfg in cands:
        try:
            us = float(time_ms(cfg)) * 1e3
        except Exception as e:  # noqa: BLE001 - any failing candidate is skipped, not fatal
            first_error = first_error or e
            timed.append({"config": cfg, "us": None, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        timed.append({"config": cfg, "us": us})
    return first_error


def sequence_timer(calls_for: Callable[[dict], list]) -> Callable[[dict], float]:
    """``time_ms`` for :func:`choose_config`: ms per call of ``calls_for(config)`` (one call
    per weight copy) run back to back in one CUDA graph."""

    def time_ms(cfg: dict) -> float:
        return sequence_ms(calls_for(cfg), reps=10, rounds=5)

    return time_ms
