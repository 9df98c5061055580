"""GPU probe: when each CTA of one sparse-GEMV launch starts and finishes its loop.

Nsight Compute (``scripts/gemv_ncu.sh``, kernel_notes section 13) puts the Llama-3-8B M = 1
kernels' SMs idle for 11-17% of their elapsed cycles: ramp and tail, not the main loop. This
probe says which: it launches ``_sparse_gemv_kernel`` with the traced wide tile of
``benchmarks/kernel_variants/wide_trace.py`` (masked mode), which writes per CTA the
%globaltimer at the tile's start and after its K loop, its SM and its kept rows. Each case
runs its launch back to back over distinct weight copies (as the sequence protocol), traces
the last one, and prints, relative to the first CTA's start (ns): the spread of the CTA
starts, of the loop ends, the launch's CUDA-event time, and how many CTAs are inside their
loop in each tenth of the span.

    python benchmarks/gemv_timeline.py --cases gate_up:0.5 down:0.5 o:0.5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANT = ROOT / "benchmarks" / "kernel_variants" / "wide_trace.py"


def load_traced_kernel():
    """triton_sparse_gemv whose wide tile is the traced variant: the variant's tile is put in
    fma_wide before triton_sparse_gemv binds it (rebuilt if it was imported already)."""
    from was_compile.kernels import fma_wide

    spec = importlib.util.spec_from_file_location("wide_trace", VARIANT)
    variant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variant)
    fma_wide._fma_tile_wide = variant._fma_tile_wide
    from was_compile.kernels import triton_sparse_gemv

    return importlib.reload(triton_sparse_gemv)


def percentiles(values, qs=(0.0, 0.1, 0.5, 0.9, 1.0)) -> list[float]:
    s = sorted(values)
    return [s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] for q in qs]


def _empty_kernel_us(grid: tuple, calls: int) -> float:
    """Microseconds per launch of a kernel that does nothing, with this grid and one warp per
    CTA, ``calls`` back to back in one CUDA graph: launch, CTA dispatch and drain alone."""
    import torch
    import triton
    import triton.language as tl

    from was_compile.kernels.graph_timing import sequence_ms

    @triton.jit
    def _nothing(ptr, FLAG: tl.constexpr):
        if FLAG:  # never: the kernel has an argument but touches no memory
            tl.store(ptr, 0)

    buf = torch.zeros(1, device="cuda")
    _nothing[grid](buf, FLAG=False, num_warps=1)
    return sequence_ms([lambda: _nothing[grid](buf, FLAG=False, num_warps=1)] * calls) * 1e3


def _pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((u - ma) * (v - mb) for u, v in zip(a, b))
    va = sum((u - ma) ** 2 for u in a) ** 0.5
    vb = sum((v - mb) ** 2 for v in b) ** 0.5
    return cov / (va * vb) if va and vb else 0.0


def trace_case(tsg, case: str) -> dict:
    """Trace the last of a graph of back-to-back launches of one case (see the module doc)."""
    import torch
    from gemv_pattern_probe import CONFIGS, SHAPES

    from was_compile.kernels.autotune_configs import MAX_SEGMENTS, m_bucket, sparsity_bucket
    from was_compile.kernels.graph_timing import capture_graph, copies_for, l2_bytes
    from was_compile.kernels.splitk import atomic_workspace
    from was_compile.kernels.tuning import make_activations, make_weight_t

    dev = torch.device("cuda")
    shape, sp = case.split(":")[0], float(case.split(":")[1])
    k, ends = SHAPES[shape]
    n = ends[-1]
    cfg = CONFIGS[shape]
    x, thr = make_activations(1, k, sp, torch.bfloat16, dev, len(ends), seed=1)
    copies = copies_for(k * n * 2, l2_bytes(dev))
    w_ts = [make_weight_t(n, k, torch.bfloat16, dev, seed=n + k + i) for i in range(copies)]
    grid = (tsg.column_tiles(tuple(ends), cfg["BLOCK_N"]), tsg.num_k_splits(k, cfg))
    ctas = grid[0] * grid[1]
    tsg.reserve_workspace_for(w_ts[0], ends)
    partials, tickets = atomic_workspace(w_ts[0].device, n, grid[0])
    trace = torch.zeros(ctas * 4, dtype=torch.int64, device=dev)
    y = torch.empty(1, n, dtype=x.dtype, device=dev)
    e_args = list(ends) + [n] * (MAX_SEGMENTS - len(ends))

    def launch(w_t):
        tsg._sparse_gemv_kernel[grid](
            x, w_t, thr, partials, tickets, trace.view(torch.int32), tickets, y, y,
            1, n, k, x.stride(0), thr.stride(0), *e_args,
            sparsity_bucket(sp), m_bucket(1), True, False, True, False,
            BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], K_ITERS=cfg["K_ITERS"],
            USE_DOT=0, COMPACT=0, WIDE=1, num_warps=1, num_stages=1,
        )  # fmt: skip

    launch(w_ts[0])  # compile
    ref = torch.where(x.float().abs() > thr[0], x.float(), 0.0) @ w_ts[0].float()
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()  # segment 0 = all
    graph = capture_graph(lambda: [launch(w) for w in w_ts])
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    per_call_us = start.elapsed_time(end) * 1e3 / len(w_ts)
    t = trace.view(ctas, 4).cpu()
    t0, t1 = t[:, 0], t[:, 1]
    base = int(t0.min())
    starts = [(int(v) - base) / 1e3 for v in t0]
    ends_us = [(int(v) - base) / 1e3 for v in t1]
    span = max(ends_us)
    bins = 10
    busy = []
    for b in range(bins):
        lo, hi = span * b / bins, span * (b + 1) / bins
        busy.append(sum(1 for s, e in zip(starts, ends_us) if s < hi and e > lo))
    sm_ids = [int(v) for v in t[:, 2]]
    kept = [int(v) for v in t[:, 3]]
    sms = len(set(sm_ids))
    loops = [e - s for s, e in zip(starts, ends_us)]
    per_sm: dict[int, int] = {}
    for sm in sm_ids:
        per_sm[sm] = per_sm.get(sm, 0) + 1
    # CTAs are numbered pid_k-major: quarters of the K range in launch order
    quarter = [loops[i * ctas // 4 : (i + 1) * ctas // 4] for i in range(4)]
    empty_us = _empty_kernel_us(grid, len(w_ts))
    row = {"shape": shape, "K": k, "N": n, "sparsity": sp, "config": cfg, "ctas": ctas,
           "sms_used": sms, "per_call_us": per_call_us, "loop_span_us": span,
           "start_us_p0_10_50_90_100": percentiles(starts),
           "loop_end_us_p0_10_50_90_100": percentiles(ends_us),
           "loop_us_p0_10_50_90_100": percentiles([e - s for s, e in zip(starts, ends_us)]),
           "ctas_in_loop_per_tenth": busy, "kept_rows_p0_50_100":
           percentiles([int(v) for v in t[:, 3]], (0.0, 0.5, 1.0)),
           "max_rel_err_segment0": err, "empty_kernel_us": empty_us,
           "after_last_loop_us": per_call_us - span,
           "r_loop_vs_kept_rows": _pearson(loops, [float(v) for v in kept]),
           "r_loop_vs_ctas_on_sm": _pearson(loops, [float(per_sm[sm]) for sm in sm_ids]),
           "ctas_per_sm_min_max": [min(per_sm.values()), max(per_sm.values())],
           "loop_us_mean_per_k_quarter": [sum(q) / len(q) for q in quarter],
           "trace_start_end_sm_kept": [[round(a, 3), round(b, 3), c, d] for a, b, c, d in
                                       zip(starts, ends_us, sm_ids, kept)]}  # fmt: skip
    print(f"{case}: {ctas} CTAs on {sms} SMs, {per_call_us:.1f} us per call (sequence), "
          f"loop span {span:.1f} us, err {err:.1e}")  # fmt: skip
    for key in ("start_us_p0_10_50_90_100", "loop_end_us_p0_10_50_90_100",
                "loop_us_p0_10_50_90_100"):  # fmt: skip
        print(f"  {key:<30}" + " ".join(f"{v:7.2f}" for v in row[key]))
    print(f"  CTAs in their loop per tenth of the span: {busy}")
    print(f"  kept rows per CTA p0/50/100: {row['kept_rows_p0_50_100']}")
    print(
        f"  after the last loop end: {per_call_us - span:.2f} us; an empty kernel of this "
        f"grid: {empty_us:.2f} us per launch"
    )
    print(f"  r(loop time, kept rows) {row['r_loop_vs_kept_rows']:.2f}, r(loop time, CTAs on "
          f"its SM) {row['r_loop_vs_ctas_on_sm']:.2f}, CTAs per SM {row['ctas_per_sm_min_max']}, "
          f"mean loop per K quarter " + " ".join(f"{v:.2f}" for v in
          row["loop_us_mean_per_k_quarter"]))  # fmt: skip
    del graph
    w_ts.clear()
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["gate_up:0.5", "down:0.5", "o:0.5"])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gemv_timeline.json"))
    args = p.parse_args(argv)

    import torch
    import triton

    tsg = load_traced_kernel()
    results = [trace_case(tsg, case) for case in args.cases]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "command": " ".join(sys.argv),
            "clock": "%globaltimer (ns), relative to the first CTA's start",
            "protocol": "the traced launch is the last of a CUDA graph of back-to-back calls "
            "over distinct weight copies; per_call_us = that graph's time / calls"}  # fmt: skip
    # compact: the raw traces are thousands of rows per case
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": results}, separators=(",", ":")))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
