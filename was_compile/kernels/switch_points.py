"""Where decode stops paying: the measured switch from the sparse GEMV to the masked dense path.

The sparse kernel reads only the weight rows that at least one of the M rows keeps; the
union of M independent rows' kept channels grows quickly with M (1 - s**M of the channels
for a per-row sparsity s), and a dense GEMM on the masked input (the prefill path: same mask
semantics, cuBLAS) wins from some M on. Where, depends on the shape, the dtype, the sparsity
and the GPU, so it is measured, never guessed: ``was tune MODEL`` times, per site shape, the
kernel and the masked dense path at M = 1, 2, 4, 8 (and 16) for the sparsity buckets of the
tuned sparsities (by default 0% and 50%, plus the unknown bucket), and
:func:`record` keeps, per key, the largest M up to which the kernel was faster at every
measured M (0: the kernel never was). The table lives in ``$WAS_CACHE_DIR/switch_points.json``
(default ``~/.cache/was_compile``), keyed by the GPU's name, so a second process and every
later compile of a model of the same shapes use it with no timing runs.

A sparsity bucket that was not measured takes the switch point of the nearest measured
bucket below it (a schedule at 40% uses the one measured at 0%, one at 80% the one at 50%):
the kernel reads fewer rows at higher sparsity while the masked path costs the same, so a
lower bucket's switch point is a safe one. Without any entry for the shape the op keeps its
default (the kernel for up to ``max_decode_rows`` rows): an untuned shape behaves as before
tuning.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = ["table_path", "record", "decode_rows_limit", "switch_rows"]

_LOCK = threading.Lock()


def table_path() -> Path:
    """``$WAS_CACHE_DIR/switch_points.json`` (default ``~/.cache/was_compile/...``)."""
    root = os.environ.get("WAS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "was_compile"
    )
    return Path(root) / "switch_points.json"


def _key(device_name: str, dtype: torch.dtype | str, k: int, ends: Sequence[int], bucket: int):
    dtype_name = str(dtype).replace("torch.", "")
    return f"{device_name}|{dtype_name}|{k}|{','.join(map(str, ends))}|{bucket}"


def switch_rows(rows: Iterable[dict]) -> dict[tuple, int]:
    """From timing rows {K, segment_ends, sparsity_bucket, M, time_us, prefill_us} the switch
    point per (K, segment_ends, bucket): the largest measured M such that the kernel was
    faster than the masked dense path at it and at every smaller measured M; 0 where it lost
    at the smallest M."""
    by_key: dict[tuple, dict[int, bool]] = {}
    for r in rows:
        key = (int(r["K"]), tuple(int(e) for e in r["segment_ends"]), int(r["sparsity_bucket"]))
        by_key.setdefault(key, {})[int(r["M"])] = r["time_us"] < r["prefill_us"]
    out = {}
    for key, wins in by_key.items():
        limit = 0
        for m in sorted(wins):
            if not wins[m]:
                break
            limit = m
        out[key] = limit
    return out


def record(rows: Iterable[dict], device_name: str, dtype: torch.dtype) -> dict[tuple, int]:
    """Merge the switch points of ``rows`` (see :func:`switch_rows`) into the on-disk table
    for ``device_name`` / ``dtype``; returns them. Atomic write (a reader never sees half a
    file)."""
    points = switch_rows(rows)
    path = table_path()
    with _LOCK:
        table = _read(path)
        for (k, ends, bucket), limit in points.items():
            table[_key(device_name, dtype, k, ends, bucket)] = limit
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    _cached_table.cache_clear()
    return points


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"the switch-point table {path} cannot be read ({e}); delete it and run "
            "`was tune MODEL` again"
        ) from e
    if not isinstance(data, dict):
        raise RuntimeError(f"the switch-point table {path} is not a JSON object; delete it")
    return data


@functools.cache
def _cached_table() -> dict:
    """The table, read once per process (the op looks it up on every call; ``record`` and
    tests clear this cache)."""
    return _read(table_path())


@functools.lru_cache(maxsize=4096)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def decode_rows_limit(x: torch.Tensor, k: int, ends: Sequence[int], bucket: int) -> int | None:
    """Largest number of rows for which the sparse kernel was measured faster than the masked
    dense path for this shape, dtype, sparsity bucket and GPU (an unmeasured bucket: the
    nearest measured one below it; the unknown bucket 0 only itself); None where never
    measured."""
    table = _cached_table()
    if not table:
        return None
    name = _device_name(x.device.index if x.device.index is not None else 0)
    for b in [bucket] + list(range(bucket - 1, 0, -1)):  # bucket 0 (unknown) has no "below"
        limit = table.get(_key(name, x.dtype, k, tuple(ends), b))
        if limit is not None:
            return limit
    return None
