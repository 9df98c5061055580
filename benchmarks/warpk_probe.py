"""GPU probe: sparse GEMV kernels that try another structure than the package's (kernel_notes
sections 20-24), beside cuBLAS and the package's kernel with the config ``kernels.json`` holds
(``--package-caps``: also under register caps), in one process with kernels.py's sequence
protocol. From ``kernel_variants/``:

* ``warpk_gluon.py`` (``--shapes``): one CTA per 256-column tile, its warps splitting K,
  summed in shared memory;
* ``cluster_gluon.py`` (``--cluster``): a cluster of CTAs per tile, summed in CTA 0's shared
  memory through distributed shared memory;
* ``balanced_gluon.py`` (``--balanced``): one CTA per SM over balanced column ranges;
* ``fullk_narrow.py`` (``--fullk``) and ``narrow_gluon.py`` (``--narrow``): no K split at all,
  narrow column tiles streaming all of K;
* ``tiled_wide.py`` (``--tiled``) and ``tiled_dot.py`` (``--tiled-dot``, the only one for
  M > 1): the package's loops over a column-tiled weight layout, or over [K, N] as a control.

    python benchmarks/warpk_probe.py --cases gate_up:0.5 gate_up:0.7 --out /tmp/warpk.json
    python benchmarks/warpk_probe.py --cases gate_up:0.5 down:0.5 --shapes '[]' --bounds \
        --cluster '[[8, 2, 16, 128, 256], [16, 4, 16, 96, 128]]' --out /tmp/cluster.json
    python benchmarks/warpk_probe.py --cases gate_up:0.5 --shapes '[]' \
        --balanced '[[-1, 32, 8, 256, 0]]' --out /tmp/balanced.json
    python benchmarks/warpk_probe.py --cases gate_up:0.5 --shapes '[]' --package-caps '[96]' \
        --fullk '[[16, 256, 0, 0]]' --tiled '[[8, 16, 96, 1], [8, 16, 96, 0]]' --out /tmp/t.json
    python benchmarks/warpk_probe.py --model Llama-3.2-1B --cases qkv:0.9:8 --shapes '[]' \
        --tiled-dot '[[64, 64, 1, 2, 3, 0, 1]]' --out /tmp/tdot.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from config_sweep import case_inputs, kernels_json_config, write_results  # noqa: E402
from kernels import model_shapes  # noqa: E402

MAX_REL_ERR = 2e-2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Llama-3-8B")
    p.add_argument(
        "--cases",
        nargs="+",
        required=True,
        help="SHAPE:SPARSITY[:M] (M = 1 unless given; only --tiled-dot takes M > 1)",
    )
    p.add_argument("--shapes", default="[[32, 8], [16, 16], [16, 8], [32, 4]]",
                   help="warpk: JSON list of [warps, BLOCK_K]")  # fmt: skip
    p.add_argument("--cluster", default="[]",
                   help="cluster: JSON [[CTAs, warps, BLOCK_K(, cap or 0, cols)]]")  # fmt: skip
    p.add_argument("--balanced", default="[]",
                   help="balanced: JSON [[CTAs (-n: n x the SM count), warps, BLOCK_K, cols, "
                   "interleave]]")  # fmt: skip
    p.add_argument(
        "--narrow",
        default="[]",
        help="narrow_gluon: JSON [[columns, warps, BLOCK_K, register cap or 0]]",
    )
    p.add_argument(
        "--package-caps",
        default="[]",
        help="also time the package's kernels.json config under these register caps",
    )
    p.add_argument(
        "--tiled-dot",
        default="[]",
        help="tiled_dot: JSON [[BLOCK_N, BLOCK_K, K_ITERS, warps, stages, cap or 0, tiled]]",
    )
    p.add_argument(
        "--tiled",
        default="[]",
        help="tiled_wide: JSON [[BLOCK_K, K_ITERS, register cap or 0(, 0: [K, N] layout)]]",
    )
    p.add_argument(
        "--fullk",
        default="[]",
        help="fullk_narrow: JSON [[BLOCK_N, BLOCK_K, mode (0 masked, 1 COMPACT, "
        "2 masked PIPE=2), register cap or 0(, list block)]]",
    )
    p.add_argument(
        "--bounds",
        action="store_true",
        help="also time each cluster config without its reduction (wrong output)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch
    from kernel_variants import balanced_gluon as bal
    from kernel_variants import cluster_gluon as cl
    from kernel_variants import fullk_narrow as fk
    from kernel_variants import narrow_gluon as nw
    from kernel_variants import tiled_dot as td
    from kernel_variants import tiled_wide as tw
    from kernel_variants import warpk_gluon as wk
    from timing import copy_bandwidth_Bps

    from was_compile.kernels import triton_sparse_gemv as base
    from was_compile.kernels.graph_timing import events_ms, sequence_ms

    dev = torch.device("cuda")
    t0 = time.time()
    shapes = {name: (k, ends, bias) for name, k, ends, bias in model_shapes(args.model)}
    copy_bw = copy_bandwidth_Bps(dev, lambda fn: events_ms(fn, reps=5, rounds=7))
    print(f"copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = []
    for case in args.cases:
        shape, sp, *m = case.split(":")
        m = int(m[0]) if m else 1
        sp = float(sp)
        inputs = case_inputs(shapes[shape], m, sp, dev, copy_bw, [base])
        if inputs.bias is not None:
            raise SystemExit(f"{args.model} {shape} has a bias: the probes take none")
        x, thr, ends, w_ts, ref = inputs.x, inputs.thr, inputs.ends, inputs.w_ts, inputs.ref
        cublas_us, limit_us, union = inputs.cublas_us, inputs.limit_us, inputs.union
        print(f"\n{args.model} {shape} M={m} {sp:.0%}: cuBLAS {cublas_us:.2f} us, limit "
              f"{limit_us:.2f} us", flush=True)  # fmt: skip
        impls = []
        cfg = kernels_json_config(args.model, shape, sp, m)
        if cfg:
            impls.append(
                ("package " + json.dumps(cfg), functools.partial(base.sparse_gemv, config=cfg))
            )
            for cap in json.loads(args.package_caps):
                capped = {**cfg, "maxnreg": cap}
                impls.append(("package " + json.dumps(capped),
                              functools.partial(base.sparse_gemv, config=capped)))  # fmt: skip
        for warps, bk in json.loads(args.shapes):
            impls.append(
                (
                    f"warpk W={warps} BLOCK_K={bk}",
                    functools.partial(wk.warpk_gemv, warps=warps, block_k=bk),
                )
            )
        for ctas, warps, bk, *more in json.loads(args.cluster):
            cap, cols = (more + [0, 256])[:2] if more else (0, 256)
            name = f"cluster C={ctas} W={warps} BLOCK_K={bk} cols={cols}"
            fn = functools.partial(cl.cluster_gemv, ctas=ctas, warps=warps, block_k=bk,
                                   maxnreg=cap or None, cols=cols)  # fmt: skip
            impls.append((name + (f" maxnreg={cap}" if cap else ""), fn))
            if args.bounds:  # the same kernel without its reduction: wrong output, a bound
                impls.append((name + (f" maxnreg={cap}" if cap else "") + " NO-REDUCTION",
                              functools.partial(fn, reduce=False)))  # fmt: skip
        for ctas, warps, bk, cols, inter in json.loads(args.balanced):
            ctas = -ctas * sms if ctas < 0 else ctas
            fn = functools.partial(bal.balanced_gemv, ctas=ctas, warps=warps, block_k=bk,
                                   cols=cols, interleave=bool(inter))  # fmt: skip
            name = f"balanced P={ctas} W={warps} BLOCK_K={bk} cols={cols} interleave={inter}"
            impls.append((name, fn))
        for bn, bk, k_iters, warps, stages, cap, tiled in json.loads(args.tiled_dot):
            fn = functools.partial(td.tiled_dot_gemv, block_n=bn, block_k=bk, k_iters=k_iters,
                                   warps=warps, stages=stages, maxnreg=cap or None,
                                   tiled=bool(tiled))  # fmt: skip
            name = (f"{'tiled' if tiled else 'untiled'} dot {bn}x{bk}x{k_iters} w{warps} "
                    f"s{stages}" + (f" maxnreg={cap}" if cap else ""))  # fmt: skip
            impls.append((name, fn))
        for bk, k_iters, cap, *lay in json.loads(args.tiled):
            tiled = bool(lay[0]) if lay else True
            fn = functools.partial(tw.tiled_gemv, block_k=bk, k_iters=k_iters,
                                   maxnreg=cap or None, tiled=tiled)  # fmt: skip
            name = f"{'tiled' if tiled else 'untiled'} 256x{bk}x{k_iters}"
            impls.append((name + (f" maxnreg={cap}" if cap else ""), fn))
        for cols, warps, bk, cap in json.loads(args.narrow):
            fn = functools.partial(nw.narrow_gemv, cols=cols, warps=warps, block_k=bk,
                                   maxnreg=cap or None)  # fmt: skip
            name = f"narrow C={cols} W={warps} BLOCK_K={bk}"
            impls.append((name + (f" maxnreg={cap}" if cap else ""), fn))
        for bn, bk, mode, cap, *lb in json.loads(args.fullk):
            lb = lb[0] if lb else 512
            compact, pipe = (1, 1) if mode == 1 else (0, 2 if mode == 2 else 1)
            fn = functools.partial(fk.fullk_gemv, block_n=bn, block_k=bk, compact=compact,
                                   pipe=pipe, maxnreg=cap or None, list_block=lb)  # fmt: skip
            name = f"fullk BLOCK_N={bn} BLOCK_K={bk} COMPACT={compact}"
            name += f" list_block={lb}" if compact else (" PIPE=2" if pipe == 2 else "")
            name += f" maxnreg={cap}" if cap else ""
            impls.append((name, fn))
        for name, fn in impls:
            try:
                y = fn(x, w_ts[0], thr, ends)
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                us = sequence_ms([functools.partial(fn, x, w, thr, ends) for w in w_ts]) * 1e3
            except Exception as e:  # a shape the variant does not take, a compile failure
                print(f"  {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            flag = "" if err <= MAX_REL_ERR else "  WRONG"
            print(f"  {us:7.2f} us {cublas_us / us:6.3f}x  {limit_us / us:5.1%} of limit  "
                  f"err {err:.1e}  {name}{flag}", flush=True)  # fmt: skip
            rows.append({"model": args.model, "shape": shape, "M": m, "sparsity": sp,
                         "union_kept": union, "impl": name, "us": us, "cublas_us": cublas_us,
                         "limit_us": limit_us, "speedup_vs_cublas": cublas_us / us,
                         "max_rel_err": err})  # fmt: skip
        del w_ts, inputs  # the weight copies: freed before the next case
        torch.cuda.empty_cache()
    write_results(args.out, rows, copy_bw, t0, "sequence protocol (kernels.py), bf16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
