"""GPU probe: does the sparse GEMV lose time to *where* the kept channels are, or to how many?

kernels.json shows the kernel's time above the byte limit growing with sparsity (Llama-3-8B
gate+up, M = 1: 2.0 us over the limit at 25%, 4.6 at 50%, 6.6 at 70%) while its marginal
cost per kept byte is at the HBM peak. Two readings: the scattered kept rows cost DRAM
efficiency (row-buffer locality), or the per-step structure of the kernel is latency-bound
once steps carry fewer rows. This probe holds the config fixed and changes only the pattern
of kept channels at the same count:

* ``random``: ``make_activations`` (Laplace x, per-channel thresholds; what kernels.py uses);
* ``chunk-front``: in every run of 128 channels the first (1 - s) * 128 are kept (each CTA
  reads contiguous rows; its last steps keep nothing);
* ``k-front``: the first (1 - s) * K channels are kept (whole K chunks empty: their CTAs
  only add zeros).

Timing as kernels.py (``--protocol sequence``): the calls back to back over distinct weight
copies in one CUDA graph, per call, cuBLAS the same way, the byte limit from the eager copy
bandwidth of the same run. ``--ncu CASE`` instead runs one case's call eagerly a few times,
for Nsight Compute to profile (see ``scripts/gemv_ncu.sh``).

    python benchmarks/gemv_pattern_probe.py --cases gate_up:0.5 down:0.5 gate_up:0.7
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tile_probe import SHAPES  # noqa: E402  (Llama-3-8B: name -> (K, segment ends))

# the configs kernels.json's tuner chose at M = 1, 50% (H100, 4c2d5c5), held fixed over
# every pattern
CONFIGS = {
    "qkv": {"BLOCK_N": 256, "BLOCK_K": 16, "K_ITERS": 4},
    "o": {"BLOCK_N": 256, "BLOCK_K": 32, "K_ITERS": 2},
    "gate_up": {"BLOCK_N": 256, "BLOCK_K": 8, "K_ITERS": 16},
    "down": {"BLOCK_N": 256, "BLOCK_K": 16, "K_ITERS": 8},
}
PATTERNS = ("random", "chunk-front", "k-front")


def pattern_thresholds(x, thr, sparsity: float, pattern: str):
    """Thresholds [S, K] that keep the same number of channels as ``thr`` keeps of x's first
    row, placed by ``pattern`` (M = 1)."""
    import torch

    if pattern == "random":
        return thr
    k = x.shape[1]
    kept = int((x[0].float().abs() > thr[0]).sum())
    idx = torch.arange(k, device=x.device)
    if pattern == "chunk-front":
        keep = (idx % 128) < round(128 * kept / k)
    elif pattern == "k-front":
        keep = idx < kept
    else:
        raise ValueError(f"unknown pattern {pattern!r}; one of {PATTERNS}")
    row = torch.where(keep, -1.0, float("inf")).float()
    return row.expand_as(thr).contiguous()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["gate_up:0.5", "down:0.5"],
                   help="SHAPE:SPARSITY")  # fmt: skip
    p.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    p.add_argument(
        "--ncu",
        default=None,
        metavar="SHAPE:SPARSITY[:PATTERN]",
        help="run this case's kernel 5 times in an NVTX range 'probe' (ncu), exit",
    )
    p.add_argument("--cublas", action="store_true", help="with --ncu: F.linear, not ours")
    p.add_argument(
        "--variants",
        default="[{}]",
        help="JSON list of changes to each shape's config, each timed: '[{}, {\"DYNAMIC\": 1}]'",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gemv_pattern_probe.json"))
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import triton
    from gemv_bytes import masked_reference
    from timing import copy_bandwidth_Bps

    from was_compile.kernels.graph_timing import copies_for, events_ms, l2_bytes, sequence_ms
    from was_compile.kernels.triton_sparse_gemv import reserve_workspace_for, sparse_gemv
    from was_compile.kernels.tuning import make_activations, make_weight_t

    dev = torch.device("cuda")

    def setup(case: str):
        parts = case.split(":")
        shape, sp = parts[0], float(parts[1])
        k, ends = SHAPES[shape]
        cfg = {"USE_DOT": 0, "COMPACT": 0, "WIDE": 1, "num_warps": 1, "num_stages": 1,
               **CONFIGS[shape]}  # fmt: skip
        x, thr = make_activations(1, k, sp, torch.bfloat16, dev, len(ends), seed=1)
        return shape, sp, k, ends, cfg, x, thr

    if args.ncu:
        shape, sp, k, ends, cfg, x, thr = setup(args.ncu)
        pattern = args.ncu.split(":")[2] if args.ncu.count(":") >= 2 else "random"
        thr = pattern_thresholds(x, thr, sp, pattern)
        w_t = make_weight_t(ends[-1], k, torch.bfloat16, dev, seed=ends[-1] + k)
        if args.cublas:
            w = w_t.t().contiguous()
            fn = functools.partial(F.linear, x, w)
        else:
            reserve_workspace_for(w_t, ends)
            fn = functools.partial(sparse_gemv, x, w_t, thr, ends, config=cfg)
        fn()  # compile (and tune nothing: explicit config) outside the profiled range
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("probe")
        for _ in range(5):
            fn()
        torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        return 0

    copy_bw = copy_bandwidth_Bps(dev, lambda fn: events_ms(fn, reps=5, rounds=7))
    print(f"copy {copy_bw / 1e12:.2f} TB/s")
    print(f"{'case':<14}{'pattern':<13}{'kept':>6}{'us':>8}{'limit':>8}{'%lim':>6}"
          f"{'cuBLAS':>8}{'x':>6}{'err':>9}")  # fmt: skip
    rows = []
    for case in args.cases:
        shape, sp, k, ends, cfg, x, thr0 = setup(case)
        n = ends[-1]
        copies = copies_for(k * n * 2, l2_bytes(dev))
        w_ts = [make_weight_t(n, k, torch.bfloat16, dev, seed=n + k + i) for i in range(copies)]
        reserve_workspace_for(w_ts[0], ends)
        ws = [w.t().contiguous() for w in w_ts[: max(4, copies // 2)]]
        cublas_us = sequence_ms([functools.partial(F.linear, x, w) for w in ws]) * 1e3
        del ws
        for pattern, change in itertools.product(args.patterns, json.loads(args.variants)):
            c = {**cfg, **change}
            thr = pattern_thresholds(x, thr0, sp, pattern)
            ref, kept_bytes, union = masked_reference(x, thr, w_ts[0], ends)
            y = sparse_gemv(x, w_ts[0], thr, ends, config=c)
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            calls = [functools.partial(sparse_gemv, x, w, thr, ends, config=c) for w in w_ts]
            us = sequence_ms(calls) * 1e3
            y = sparse_gemv(x, w_ts[0], thr, ends, config=c)  # after the replays: still right
            err = max(err, ((y.float() - ref).abs().max() / ref.abs().max()).item())
            limit_us = kept_bytes / copy_bw * 1e6
            rows.append({"shape": shape, "K": k, "N": n, "sparsity": sp, "pattern": pattern,
                         "union_kept": union, "config": c, "us": us, "limit_us": limit_us,
                         "fraction_of_limit": limit_us / us, "cublas_us": cublas_us,
                         "speedup_vs_cublas": cublas_us / us, "max_rel_err": err,
                         "weight_copies": copies})  # fmt: skip
            tag = "".join(f" {key}={v}" for key, v in change.items())
            print(f"{shape:<8}{sp:>5.0%} {pattern:<13}{union:>6.3f}{us:>8.1f}{limit_us:>8.1f}"
                  f"{limit_us / us:>6.0%}{cublas_us:>8.1f}{cublas_us / us:>6.2f}{err:>9.1e}"
                  f"{tag}", flush=True)  # fmt: skip
        del w_ts
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "copy_bandwidth_Bps": copy_bw,
            "command": " ".join(sys.argv), "timing": "sequence protocol (kernels.py), M = 1, "
            "bf16, one config per shape and variant"}  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
