"""Ahead-of-time autotuning of the sparse GEMV for a model's linear shapes (``was tune MODEL``).

Each (N, K, M, sparsity) runs the kernel once on the current CUDA device, which makes ``gemv_tuner``
time the candidate configs for that tuning key (GPU, kernel-source hash, dtype, K, segment ends, M
bucket, sparsity bucket, reduction) and store the choice on disk, so later processes start tuned.
The chosen config and the time of the tuned kernel are recorded, next to dense cuBLAS (``F.linear``
on the [N, K] weight) and the op's masked dense path for the same shape, all three timed as
decode runs them (``graph_timing.sequence_ms``: back to back in one CUDA graph over distinct
weight copies, no flush).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .autotune_configs import m_bucket, sparsity_bucket

__all__ = ["tune_shapes", "make_weight_t", "make_activations"]


def make_weight_t(n: int, k: int, dtype: torch.dtype, device, seed: int = 0) -> torch.Tensor:
    """Random weight_t [K, N] ~ N(0, 1/K), made on the device (fast for 8B-model shapes)."""
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(k, n, generator=g, device=device, dtype=torch.float32)
    return w.mul_(k**-0.5).to(dtype)


def make_activations(
    m: int,
    k: int,
    sparsity: float,
    dtype: torch.dtype,
    device,
    n_segments: int = 1,
    seed: int = 0,
):
    """Realistic decode activations and thresholds: x ~ Laplace(0, 1) times a per-channel scale
    (activations have per-channel scales); thresholds at the quantile of |x| that drops
    ``sparsity`` of one row's channels (per channel: thr[k] = scale[k] * q, with q the Laplace
    quantile), the same for every segment. Rows are independent, so for M > 1 the union of the
    rows' kept channels is denser (1 - sparsity**M in expectation).
    Returns x [M, K] and thresholds [S, K] fp32."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    scale = torch.rand(k, generator=g) * 1.5 + 0.25
    u = torch.rand(m, k, generator=g).clamp(1e-6, 1 - 1e-6) - 0.5
    lap = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    x = (lap * scale).to(device=device, dtype=dtype)
    if sparsity <= 0.0:
        thr_row = torch.full((k,), -1.0)  # nothing dropped: |x| >= 0 > -1
    elif sparsity >= 1.0:
        thr_row = torch.full((k,), float("inf"))
    else:
        q = -float(torch.log1p(torch.tensor(-float(sparsity))))  # P(|Laplace| <= q) = sparsity
        thr_row = scale * q
    thr = thr_row.float().expand(n_segments, k).contiguous().to(device)
    return x, thr


def _config_str(cfg: dict | None) -> str:
    if not cfg:
        return "?"
    return ",".join(f"{k}={v}" for k, v in cfg.items())


def tune_shapes(
    shapes: list[tuple[int, int]],
    dtype: torch.dtype,
    m_values=(1, 2, 4, 8, 16),
    sparsities=(0.0, 0.5),
    segments: dict | None = None,
) -> list[dict]:
    """Trigger and record the autotune choice for every (N, K, M, sparsity).

    ``shapes``: (N, K) pairs (N = output features of the fused linear, K = input features).
    ``segments``: optional {(N, K): segment_ends} for fused siblings (q|k|v, gate|up); without
    it a shape is one segment. Each sparsity is tuned under its own sparsity bucket
    (``sparsity_hint=s``); one more run per (N, K, M), on data of the largest sparsity, tunes
    the "unknown" bucket that calls without a hint use (``sparsity_hint`` None in the row).
    Also times the op's masked dense path (``sparse_linear_reference``: the same mask, then
    cuBLAS) and records the switch points between the two in the on-disk table of
    ``switch_points`` for this GPU and dtype.
    Returns rows {N, K, segment_ends, M, sparsity, sparsity_hint, sparsity_bucket, config,
    time_us, cublas_us, prefill_us}."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "tune_shapes needs a CUDA device: Triton autotuning times kernels on the GPU "
            "(torch.cuda.is_available() is False)"
        )
    from . import switch_points
    from .graph_timing import copies_for, l2_bytes, sequence_ms
    from .reference import sparse_linear_reference
    from .triton_sparse_gemv import last_autotune_config, reserve_workspace_for, sparse_gemv

    device = torch.device("cuda", torch.cuda.current_device())
    l2 = l2_bytes(device)
    rows = []
    for n, k in shapes:
        ends = list((segments or {}).get((n, k), [n]))
        w_t = make_weight_t(n, k, dtype, device)
        reserve_workspace_for(w_t, ends, max(m_values, default=1))  # as the backend does
        # distinct copies: each timed call streams its weights from HBM, as in a decode step
        w_ts = [w_t] + [w_t.clone() for _ in range(copies_for(w_t.nbytes, l2) - 1)]
        w_denses = [w.t().contiguous() for w in w_ts]  # [N, K] for cuBLAS
        for m in m_values:
            m_bucket(m)  # validates M
            runs = [(s, s) for s in sparsities] + [(max(sparsities, default=0.5), None)]
            for s, hint in runs:
                x, thr = make_activations(m, k, s, dtype, device, len(ends), seed=m)
                sparse_gemv(x, w_t, thr, ends, sparsity_hint=hint)  # tunes (or loads) the key
                torch.cuda.synchronize()
                cfg = last_autotune_config()
                kernel = [functools.partial(sparse_gemv, x, w, thr, ends, sparsity_hint=hint)
                          for w in w_ts]  # fmt: skip
                cublas = [functools.partial(F.linear, x, w) for w in w_denses]
                masked = [functools.partial(sparse_linear_reference, x, w, thr, ends)
                          for w in w_ts]  # fmt: skip
                rows.append(
                    {
                        "N": n,
                        "K": k,
                        "M": m,
                        "sparsity": s,
                        "sparsity_hint": hint,
                        "sparsity_bucket": sparsity_bucket(hint),
                        "segment_ends": ends,
                        "config": _config_str(cfg),
                        "time_us": sequence_ms(kernel) * 1e3,
                        "cublas_us": sequence_ms(cublas) * 1e3,
                        "prefill_us": sequence_ms(masked) * 1e3,
                    }
                )
        del w_t, w_ts, w_denses
        torch.cuda.empty_cache()
    switch_points.record(rows, torch.cuda.get_device_name(device), dtype)
    return rows
