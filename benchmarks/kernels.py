"""GPU benchmark of the threshold-sparse GEMV against dense cuBLAS and the byte limit.

For the linear shapes of Llama-3-8B, Mistral-7B, Qwen2.5-7B and Llama-3.2-1B (q|k|v and
gate|up fused into one launch over concatenated weights, as the backend runs them), at several
sparsities and decode batch sizes M, it times:

* cublas_us: dense ``F.linear`` on the [N, K] weight (the fused weight for q|k|v, gate|up);
  cublas_split_us: the sibling linears as separate ``F.linear`` calls (what an unfused model runs);
* was_us: ``sparse_gemv`` (autotuned; the first call of each tuning key tunes it);
* limit_us: bytes that must be read / device copy bandwidth measured in this run, where the
  bytes are the kept rows of weight_t (union over the M rows' kept channels, per segment)
  + x + y + thresholds (+ bias).

Inputs: x ~ Laplace with per-channel scales, thresholds at the per-channel quantile of |x|
that drops the target fraction of ONE row's channels; rows are independent, so for M > 1 the
union of kept channels is denser (reported as union_kept).

Timing (``--protocol``): by default ``sequence``: as a decode step runs a model's layers, one
CUDA graph runs the call back to back over distinct copies of the weights (enough copies to
fill three times L2, at least four), timed with no flush, median per call
(``timing.sequence_ms``; cuBLAS the same way; the copy bandwidth by eager copies,
``timing.events_ms``). ``flush``, the protocol of the earlier results (kernels.json of
94954e7): one call per graph replay, ``triton.testing.do_bench`` with its L2 flush (a memset
of 256 MB) before each replay; the dirty L2 lines the memset leaves are written back while the
timed kernel reads, which adds ~12-19 us to every H100 call, cuBLAS's and ours alike
(``benchmarks/kernel_notes.md`` section 9 compares the two).

    python benchmarks/kernels.py            # all models, M = 1, 2, 4, 8
    python benchmarks/kernels.py --quick    # Llama-3-8B, M = 1
    python benchmarks/kernels.py --smoke    # no GPU: checks this script on a tiny model

Cost: the first call of each tuning key (N, K, M bucket, sparsity bucket) compiles and times
up to 12 configs. Measured on an H100 with a cold Triton cache: all four models, M = 1, 2, 4,
8, seven sparsities (448 rows, Mistral-7B shares Llama-3-8B's shapes) in 220 s with
``--rep 40``; Llama-3-8B alone at M = 1 and 8 in 62 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

# benchmarks/ for timing.py (already first on sys.path when this runs as a script)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    # name: (hidden, intermediate, heads, kv_heads, head_dim, qkv_bias)
    "Llama-3-8B": (4096, 14336, 32, 8, 128, False),
    "Mistral-7B": (4096, 14336, 32, 8, 128, False),
    "Qwen2.5-7B": (3584, 18944, 28, 4, 128, True),
    "Llama-3.2-1B": (2048, 8192, 32, 8, 64, False),
}
# --smoke: a tiny model run on the CPU under the Triton interpreter (checks this script's logic
# without a GPU; the timings mean nothing)
SMOKE_MODEL = {"tiny": (64, 96, 2, 1, 32, True)}
SPARSITIES = (0.0, 0.25, 0.40, 0.50, 0.60, 0.70, 0.90)
M_VALUES = (1, 2, 4, 8)


_CFG_FMT = (
    "{BLOCK_N}x{BLOCK_K}x{K_ITERS} dot={USE_DOT} compact={COMPACT} w{num_warps} s{num_stages}"
)


def _cfg_str(cfg):
    if not cfg:
        return "?"
    out = _CFG_FMT.format(**{"COMPACT": 0, **cfg})
    if cfg.get("WIDE", 0):
        out += " wide"
    if cfg.get("maxnreg"):
        out += f" r{cfg['maxnreg']}"
    return out


def _linears(x, weights):
    import torch.nn.functional as F

    return [F.linear(x, w) for w in weights]


def model_shapes(name: str):
    """[(shape name, K, segment_ends, has_bias)] of one transformer block's linears."""
    hidden, inter, heads, kv, hd, qkv_bias = {**MODELS, **SMOKE_MODEL}[name]
    q, kvw = heads * hd, kv * hd
    return [
        ("qkv", hidden, [q, q + kvw, q + 2 * kvw], qkv_bias),
        ("o", q, [hidden], False),
        ("gate_up", hidden, [inter, 2 * inter], False),
        ("down", inter, [hidden], False),
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark the WAS sparse GEMV kernel against cuBLAS and the byte limit "
        "(needs a CUDA GPU; written for an H100).",
    )
    p.add_argument("--quick", action="store_true", help="Llama-3-8B only, M = 1")
    p.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kernels.json"),
        help="where to write the JSON results (default: benchmarks/results/kernels.json)",
    )
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="subset of models")
    p.add_argument("--m", nargs="+", type=int, help=f"batch sizes M (default {list(M_VALUES)})")
    p.add_argument(
        "--sparsities",
        nargs="+",
        type=float,
        help=f"target sparsities in [0, 1] (default {list(SPARSITIES)})",
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument(
        "--protocol",
        default="sequence",
        choices=["sequence", "flush"],
        help="sequence: back-to-back calls over distinct weight copies in one graph, no flush "
        "(default); flush: one call per graph replay, L2 flushed by do_bench (older results)",
    )
    p.add_argument(
        "--reduction",
        default="atomic",
        choices=["atomic", "ordered"],
        help="how the kernel sums its split-K parts (was_compile/kernels/splitk.py): atomic "
        "(default, one kernel, as the backend runs it) or ordered (a second kernel)",
    )
    p.add_argument("--no-graph", action="store_true", help="time eager calls, not graph replays")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time in ms")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows already in --out that this run does not measure again (run the "
        "models one per process to stay under a time limit, then find them all in one file)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: a tiny model on the CPU under the Triton interpreter, to check the "
        "script itself (timings meaningless; writes to --out only if given)",
    )
    args = p.parse_args(argv)
    out_given = "--out" in (argv if argv is not None else sys.argv[1:])
    if args.smoke and not out_given:
        import tempfile

        args.out = os.path.join(tempfile.mkdtemp(prefix="was_bench_smoke_"), "kernels.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "benchmarks/kernels.py: no CUDA device (torch.cuda.is_available() is False); "
            "this benchmark times GPU kernels and must run on a GPU machine (H100).",
            file=sys.stderr,
        )
        return 2
    import torch.nn.functional as F
    import triton
    from gemv_bytes import masked_reference
    from timing import (
        copies_for,
        copy_bandwidth_Bps,
        do_bench_ms,
        events_ms,
        graph_ms,
        l2_bytes,
        sequence_ms,
    )

    from was_compile.kernels.triton_sparse_gemv import (
        last_autotune_config,
        reserve_workspace_for,
        sparse_gemv,
    )
    from was_compile.kernels.tuning import make_activations, make_weight_t

    dtype = getattr(torch, args.dtype)
    models = ["Llama-3-8B"] if args.quick else (args.models or list(MODELS))
    m_values = [1] if args.quick else (args.m or list(M_VALUES))
    sparsities = args.sparsities if args.sparsities is not None else list(SPARSITIES)
    if args.smoke:
        models, m_values = list(SMOKE_MODEL), args.m or [1, 3]
        sparsities = args.sparsities if args.sparsities is not None else [0.0, 0.6]
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    use_graph = not args.no_graph and not args.smoke
    sequence = use_graph and args.protocol == "sequence"
    l2 = l2_bytes(device) if sequence else 0

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def do_bench(fn, rep):
        if args.smoke:  # wall clock, a couple of calls
            t0 = time.perf_counter()
            for _ in range(2):
                fn()
            return (time.perf_counter() - t0) / 2 * 1e3
        return do_bench_ms(fn, warmup_ms=25, rep_ms=rep)

    def bench(calls):
        """ms per call; ``calls``: the same call over distinct weight copies."""
        calls[0]()
        sync()
        if sequence:
            return sequence_ms(calls)
        if not use_graph:
            return do_bench(calls[0], args.rep)
        return graph_ms(calls[0], lambda replay: do_bench(replay, args.rep))

    # device-to-device copy bandwidth (bytes read + written per s) of a 1 GiB tensor (20x L2:
    # nothing to flush); eager, since a copy captured in a graph runs slower (timing.events_ms)
    copy_bw = copy_bandwidth_Bps(
        device,
        events_ms if sequence else (lambda fn: do_bench(fn, 200)),
        2**20 if args.smoke else 2**29,
    )
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)"
    )
    print(f"device {device_name}; copy bandwidth {copy_bw / 1e12:.3f} TB/s")

    meta = {
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "copy_bandwidth_Bps": copy_bw,
        "timing": "smoke test: CPU wall clock, meaningless"
        if args.smoke
        else "sequence: one CUDA graph of back-to-back calls over distinct weight copies "
        "(3x L2, >= 4), no flush, CUDA events, median per call"
        if sequence
        else ("CUDA graph replay" if use_graph else "eager")
        + ", triton.testing.do_bench median, L2 flushed before each run",
        "protocol": "smoke" if args.smoke else args.protocol if use_graph else "eager",
        "reduction": args.reduction,
        "limit_bytes": "union-kept rows of weight_t (per segment) + x + y + thresholds (+ bias)",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    rows: list[dict] = []
    kept_rows: list[dict] = []
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            kept_rows = [
                r
                for r in json.load(f)["rows"]
                if not (r["model"] in models and r["M"] in m_values and r["sparsity"] in sparsities)
            ]
    measured: dict = {}  # identical shapes (Mistral = Llama-3-8B) are measured once
    elem = torch.finfo(dtype).bits // 8

    def write():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": kept_rows + rows}, f, indent=1)

    header = (
        f"{'model':<13}{'shape':<8}{'N':>6}{'K':>6}{'M':>3}{'sp':>5}{'kept':>6}"
        f"{'cuBLAS':>9}{'split':>9}{'WAS':>9}{'limit':>9}{'x cuBLAS':>9}{'%limit':>7}  config"
    )
    print(header)
    t_start = time.time()
    for model in models:
        for shape_name, k, ends, has_bias in model_shapes(model):
            n = ends[-1]
            key = (k, tuple(ends), has_bias)
            w_t = w_ts = w_denses = w_parts = None
            for m in m_values:
                for sp in sparsities:
                    if (key, m, sp) in measured:
                        rows.extend({**r, "model": model} for r in measured[(key, m, sp)])
                        continue
                    if w_t is None:
                        w_t = make_weight_t(n, k, dtype, device, seed=n + k)
                        reserve_workspace_for(w_t, ends, max(m_values))
                        copies = copies_for(n * k * elem, l2) if sequence else 1
                        w_ts = [w_t] + [w_t.clone() for _ in range(copies - 1)]
                        w_denses = [w.t().contiguous() for w in w_ts]
                        starts = [0] + ends[:-1]
                        w_parts = [[w[a:b] for a, b in zip(starts, ends)] for w in w_denses]
                        bias = (
                            torch.randn(n, device=device, dtype=torch.float32).to(dtype)
                            if has_bias
                            else None
                        )
                    x, thr = make_activations(m, k, sp, dtype, device, len(ends), seed=m)
                    gemv = functools.partial(sparse_gemv, reduction=args.reduction)
                    was_calls = [
                        functools.partial(gemv, x, w, thr, ends, bias, sparsity_hint=sp)
                        for w in w_ts
                    ]
                    y = was_calls[0]()  # autotunes this key on first use
                    sync()
                    cfg = last_autotune_config()
                    # correctness against an fp32 reference with the same masks
                    ref, kept_bytes, union_kept = masked_reference(x, thr, w_t, ends)
                    if bias is not None:
                        ref += bias.float()

                    def rel_err_of(y, ref=ref):
                        err = (y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)
                        return err.item()

                    rel_err = rel_err_of(y)
                    io_bytes = m * k * elem + m * n * elem + thr.numel() * 4
                    if bias is not None:
                        io_bytes += n * bias.element_size()
                    limit_us = (kept_bytes + io_bytes) / copy_bw * 1e6

                    was_us = bench(was_calls) * 1e3
                    cublas_us = (
                        bench([functools.partial(F.linear, x, w, bias) for w in w_denses]) * 1e3
                    )
                    if len(ends) > 1:
                        cublas_split_us = (
                            bench([functools.partial(_linears, x, ws) for ws in w_parts]) * 1e3
                        )
                    else:
                        cublas_split_us = cublas_us
                    row = {
                        "model": model,
                        "shape": shape_name,
                        "N": n,
                        "K": k,
                        "segment_ends": list(ends),
                        "bias": has_bias,
                        "M": m,
                        "sparsity": sp,
                        "union_kept": union_kept,
                        "cublas_us": cublas_us,
                        "cublas_split_us": cublas_split_us,
                        "was_us": was_us,
                        "limit_us": limit_us,
                        "speedup_vs_cublas": cublas_us / was_us,
                        "fraction_of_limit": limit_us / was_us,
                        "max_rel_err": rel_err,
                        "copy_bandwidth_Bps": copy_bw,
                        "config": cfg,
                        "weight_copies": len(w_ts),
                    }
                    new_rows = [row]
                    measured[(key, m, sp)] = new_rows
                    rows.extend(new_rows)
                    for r in new_rows:
                        r_us, r_err = r["was_us"], r["max_rel_err"]
                        print(
                            f"{model:<13}{shape_name:<8}{n:>6}{k:>6}{m:>3}{sp:>5.2f}"
                            f"{union_kept:>6.2f}{cublas_us:>9.1f}{cublas_split_us:>9.1f}"
                            f"{r_us:>9.1f}{limit_us:>9.1f}{cublas_us / r_us:>9.2f}"
                            f"{limit_us / r_us:>7.0%}  {_cfg_str(r['config'])}"
                            + (f"  REL ERR {r_err:.1e}" if r_err > 2e-2 else ""),
                            flush=True,
                        )
            del w_t, w_ts, w_denses, w_parts
            if device.type == "cuda":
                torch.cuda.empty_cache()
        write()  # after each model: partial results survive a time limit
    meta["elapsed_s"] = time.time() - t_start
    write()
    print(f"wrote {args.out} ({len(rows)} rows, {meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
