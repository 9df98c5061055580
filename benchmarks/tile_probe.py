"""Short GPU probe: explicit sparse-GEMV configs on Llama-3-8B shapes, next to cuBLAS.

For each case (shape, M, sparsity) it times dense ``F.linear`` (cuBLAS, the [N, K] weight)
and every config given (explicit meta parameters: no autotuning), each output checked against
an fp32 reference, all in one process, so the ratios are from one run. Timing as in
kernels.py: one CUDA graph per call, L2 flushed, ``do_bench`` median. Meant for a GPU slot of
two to four minutes; used to try kernel variants before they join the tuning space:

    python benchmarks/tile_probe.py --configs '[{"BLOCK_N": 256, "BLOCK_K": 16,
        "K_ITERS": 8, "WIDE": 1, "num_warps": 1}]' --cases gate_up:0.5 down:0.5 \\
        --out benchmarks/results/tile_probe.json --tag wide

``--wide-file F`` swaps in another implementation of ``fma_wide._fma_tile_wide`` (a modified
copy of the file, absolute imports) before the kernel is imported: A/B runs of kernel code.
``--merge`` adds this run's rows to an existing ``--out`` file (each run
keeps its own meta).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # timing.py, gemv_bytes.py

# Llama-3-8B linear shapes: name -> (K, segment ends); q|k|v and gate|up as one launch
SHAPES = {
    "qkv": (4096, [4096, 5120, 6144]),
    "o": (4096, [4096]),
    "gate_up": (4096, [14336, 28672]),
    "down": (14336, [4096]),
}


def _swap_wide(path: str) -> None:
    spec = importlib.util.spec_from_file_location("was_compile.kernels.fma_wide", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["was_compile.kernels.fma_wide"] = mod
    spec.loader.exec_module(mod)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", required=True, help="JSON list of explicit configs")
    p.add_argument("--cases", nargs="+", default=["gate_up:0.5", "down:0.5"],
                   help="SHAPE:SPARSITY[:M]")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/tile_probe.json"))
    p.add_argument("--tag", default="", help="label stored with every row of this run")
    p.add_argument("--wide-file", default=None, help="another fma_wide.py to compile")
    p.add_argument("--merge", action="store_true", help="append to --out")
    p.add_argument("--rep", type=int, default=40, help="do_bench rep (ms)")
    args = p.parse_args(argv)
    configs = json.loads(args.configs)
    if args.wide_file:
        _swap_wide(args.wide_file)
    import torch
    import torch.nn.functional as F
    import triton
    from gemv_bytes import masked_reference
    from timing import copy_bandwidth_Bps, do_bench_ms, graph_ms

    from was_compile.kernels.triton_sparse_gemv import sparse_gemv
    from was_compile.kernels.tuning import make_activations, make_weight_t

    dev = torch.device("cuda")

    def bench(fn):
        return graph_ms(fn, lambda replay: do_bench_ms(replay, warmup_ms=10, rep_ms=args.rep))

    copy_bw = copy_bandwidth_Bps(dev, bench)  # through a CUDA graph, like every call here
    rows = []
    print(f"copy {copy_bw / 1e12:.2f} TB/s  tag {args.tag!r}")
    print(f"{'case':<16}{'config':<34}{'us':>8}{'cuBLAS':>8}{'x':>6}{'%lim':>6}{'err':>9}")
    for case in args.cases:
        parts = case.split(":")
        shape, sp = parts[0], float(parts[1])
        m = int(parts[2]) if len(parts) > 2 else 1
        k, ends = SHAPES[shape]
        n = ends[-1]
        w_t = make_weight_t(n, k, torch.bfloat16, dev, seed=n + k)
        w = w_t.t().contiguous()
        x, thr = make_activations(m, k, sp, torch.bfloat16, dev, len(ends), seed=1)
        ref, kept_bytes, _ = masked_reference(x, thr, w_t, ends)
        limit_us = kept_bytes / copy_bw * 1e6
        dense_us = bench(functools.partial(F.linear, x, w)) * 1e3
        del w
        for cfg in configs:
            cfg = {"USE_DOT": 0, "COMPACT": 0, "num_stages": 1, **cfg}
            name = (f"{cfg['BLOCK_N']}x{cfg['BLOCK_K']}x{cfg['K_ITERS']} w{cfg.get('num_warps', 4)}"
                    + "".join(f" {key.lower()}{v}" for key, v in cfg.items()
                              if key in ("USE_DOT", "COMPACT", "WIDE") and v))  # fmt: skip
            try:
                fn = functools.partial(sparse_gemv, x, w_t, thr, ends, config=cfg)
                y = fn()
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                us = bench(fn) * 1e3
            except Exception as e:  # noqa: BLE001 - a probe: report and go on
                print(f"{case:<16}{name}: failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            rows.append({"tag": args.tag, "shape": shape, "K": k, "N": n, "segment_ends": ends,
                         "M": m, "sparsity": sp, "config": cfg, "us": us,
                         "cublas_us": dense_us, "speedup_vs_cublas": dense_us / us,
                         "limit_us": limit_us, "fraction_of_limit": limit_us / us,
                         "max_rel_err": err})  # fmt: skip
            print(f"{case:<16}{name[:33]:<34}{us:>8.1f}{dense_us:>8.1f}{dense_us / us:>6.2f}"
                  f"{limit_us / us:>6.0%}{err:>9.1e}", flush=True)  # fmt: skip
        del w_t
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "copy_bandwidth_Bps": copy_bw, "tag": args.tag,
            "wide_file": args.wide_file, "command": " ".join(sys.argv),
            "timing": f"graph replay, do_bench median, L2 flushed, rep {args.rep}ms"}  # fmt: skip
    out = Path(args.out)
    runs, old_rows = [], []
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        runs, old_rows = old["meta"]["runs"], old["rows"]
    out.write_text(json.dumps({"meta": {"runs": runs + [meta]}, "rows": old_rows + rows},
                              indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
