"""GPU probe: time a grid of sparse-GEMV configs on one model's shapes, beyond what the pruner
offers the tuner, to see whether a config the tuner never timed beats its pick.

Written for the M = 8 rows of ``kernels.json`` that lose to cuBLAS on small shapes (Qwen2.5-7B
and Llama-3.2-1B q+k+v and o, union of kept channels ~56%): there the tuner's picks split K
into 32-64 chunks of one step each, and each CTA's time is one chain of round trips (x, mask,
weight rows, mma, fp32 atomics, fence, ticket, the last CTA's read-back). The grid here adds
narrow column tiles (16-32 columns) with few K splits (fewer atomics, longer loops), which the
config space of ``autotune_configs`` does not hold. Since used for the M = 4 and M = 2 grids
(``--path``), the M = 1 steps-per-CTA plateau (``--k-iters``, ``--caps``) and same-process A/B
runs of a modified kernel (``--kernel-file``); kernel_notes sections 18-19.

For each case it times cuBLAS, the config ``kernels.json`` holds for the same row (if any) and
every config of the grid, all with kernels.py's sequence protocol in one process, each output
checked against the fp32 masked reference (a config whose error exceeds 2e-2 is reported and
not ranked). Prints the best ``--top`` per case and writes every timing to ``--out``.

    python benchmarks/config_sweep.py --model Llama-3.2-1B --cases qkv:0.9:8 o:0.9:8
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernels import MODELS, model_shapes  # noqa: E402

# dot-path grid (M >= 5): (BLOCK_N, BLOCK_K, num_warps); narrow tiles first
DOT_TILES = (
    (16, 64, 1),
    (32, 64, 2),
    (32, 128, 4),
    (64, 64, 2),
    (64, 64, 4),
    (64, 128, 4),
    (128, 64, 4),
    (128, 32, 4),
    (256, 64, 8),
)
# wide FMA grid (M <= 4): (BLOCK_N, BLOCK_K, num_warps); --tiles replaces either grid's tiles
WIDE_TILES = ((256, 8, 1), (256, 16, 1), (256, 32, 1), (512, 16, 2))
CHUNKS = (64, 128, 256, 512, 1024, 2048, 4096)
MAX_REL_ERR = 2e-2


def grid(k: int, m: int, tiles=DOT_TILES, chunks=CHUNKS, stages=(3,), compacts=None,
         k_iters=None, caps=(0,), path: str | None = None) -> list:  # fmt: skip
    """The configs timed for K channels and M rows: ``path`` "dot" or "wide" (default: dot for
    M >= 5, else wide tiles); ``k_iters`` (wide tiles) replaces the chunk list by steps per
    CTA; ``compacts``: COMPACT values (default 0 and 1 on the dot path, 0 on the wide one);
    ``caps``: register caps (0: none)."""
    out = []
    if (path or ("dot" if m >= 5 else "wide")) == "dot":
        compacts = (0, 1) if compacts is None else compacts
        for (bn, bk, w), chunk, st, compact in itertools.product(tiles, chunks, stages, compacts):
            if chunk < bk or chunk > 2 * k or (compact and m * chunk > 32 * 32 * w):
                continue  # COMPACT holds M x CHUNK of x in registers (``_fits_registers``)
            out.append({"BLOCK_N": bn, "BLOCK_K": bk, "K_ITERS": chunk // bk, "USE_DOT": 1,
                        "COMPACT": compact, "num_warps": w, "num_stages": st})  # fmt: skip
    else:
        wide_tiles = WIDE_TILES if tiles is DOT_TILES else tiles
        lengths = k_iters or (32, 64, 128, 256, 512)
        for (bn, bk, w), n, compact in itertools.product(wide_tiles, lengths, compacts or (0,)):
            iters = n if k_iters else n // bk
            if iters >= 1:
                out.append({"BLOCK_N": bn, "BLOCK_K": bk, "K_ITERS": iters, "USE_DOT": 0,
                            "COMPACT": compact, "WIDE": 1, "num_warps": w,
                            "num_stages": 1})  # fmt: skip
    return [{**c, "maxnreg": cap} if cap else c for c in out for cap in caps]


def kernels_json_config(model: str, shape: str, sparsity: float, m: int) -> dict | None:
    path = ROOT / "benchmarks/results/kernels.json"
    if not path.exists():
        return None
    for r in json.loads(path.read_text())["rows"]:
        if (r["model"], r["shape"], r["M"]) == (model, shape, m) and (
            abs(r["sparsity"] - sparsity) < 1e-9
        ):
            return r.get("config")
    return None


class CaseInputs(NamedTuple):
    """One case's inputs and baselines: x [M, K] and thresholds (Laplace activations, seed 1),
    distinct bf16 weight copies weight_t [K, N] (3x L2, >= 4), bias, the fp32 masked
    reference (bias added), the union of kept channels, cuBLAS's time over the same copies
    (sequence protocol, µs) and the byte limit at the copy bandwidth (µs)."""

    k: int
    ends: tuple
    x: object
    thr: object
    bias: object
    w_ts: list
    ref: object
    union: float
    cublas_us: float
    limit_us: float


def case_inputs(shape: tuple, m: int, sp: float, dev, copy_bw: float, modules=()) -> CaseInputs:
    """``shape``: (K, segment ends, has bias) as ``kernels.model_shapes`` gives it; ``modules``:
    kernel modules whose split-K workspace is reserved for it (outside any timing)."""
    import torch
    import torch.nn.functional as F
    from gemv_bytes import masked_reference

    from was_compile.kernels.graph_timing import copies_for, l2_bytes, sequence_ms
    from was_compile.kernels.tuning import make_activations, make_weight_t

    k, ends, has_bias = shape
    n = ends[-1]
    x, thr = make_activations(m, k, sp, torch.bfloat16, dev, len(ends), seed=1)
    copies = copies_for(k * n * 2, l2_bytes(dev))
    w_ts = [make_weight_t(n, k, torch.bfloat16, dev, seed=n + k + i) for i in range(copies)]
    bias = torch.randn(n, device=dev, dtype=torch.bfloat16) if has_bias else None
    for mod in modules:
        mod.reserve_workspace_for(w_ts[0], ends)
    ws = [w.t().contiguous() for w in w_ts]
    cublas_us = sequence_ms([functools.partial(F.linear, x, w, bias) for w in ws]) * 1e3
    del ws
    ref, kept_bytes, union = masked_reference(x, thr, w_ts[0], ends)
    if bias is not None:
        ref += bias.float()
    return CaseInputs(k, ends, x, thr, bias, w_ts, ref, union, cublas_us,
                      kept_bytes / copy_bw * 1e6)  # fmt: skip


def write_results(out: str, rows: list, copy_bw: float, t0: float, timing: str) -> None:
    """Write {"meta": device, versions, copy bandwidth, command, elapsed s, timing; "rows"}
    to ``out`` (JSON) and say so."""
    import torch
    import triton

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "copy_bandwidth_Bps": copy_bw,
            "command": " ".join(sys.argv), "elapsed_s": time.time() - t0,
            "timing": timing}  # fmt: skip
    Path(out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=list(MODELS))
    p.add_argument("--cases", nargs="+", required=True, help="SHAPE:SPARSITY:M")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--tiles", default=None, help="JSON list of [BLOCK_N, BLOCK_K, num_warps]: "
                   "the dot tiles to time instead of DOT_TILES")  # fmt: skip
    p.add_argument("--chunks", default=None, help="JSON list of chunk lengths (channels)")
    p.add_argument("--stages", default="[3]", help="JSON list of num_stages (dot path)")
    p.add_argument("--k-iters", default=None, help="JSON list of K_ITERS (wide tiles, M <= 4), "
                   "instead of chunk lengths")  # fmt: skip
    p.add_argument("--caps", default="[0]", help="JSON list of register caps (0: none)")
    p.add_argument("--path", choices=["dot", "wide"], default=None,
                   help="kernel path of the grid (default: dot at M >= 5, else wide)")  # fmt: skip
    p.add_argument("--compact", default=None,
                   help="JSON list of COMPACT values (default [0, 1] dot, [0] wide)")  # fmt: skip
    p.add_argument("--kernel-file", default=None,
                   help="a modified copy of triton_sparse_gemv.py: every config is timed with "
                   "it too (rows say which: impl base / variant)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=1e9, help="stop timing new configs after")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/config_sweep.json"))
    args = p.parse_args(argv)

    import torch
    from kernel_sass import load_kernel_module
    from timing import copy_bandwidth_Bps

    from was_compile.kernels import triton_sparse_gemv as base
    from was_compile.kernels.graph_timing import events_ms, sequence_ms

    dev = torch.device("cuda")
    t0 = time.time()
    shapes = {name: (k, ends, bias) for name, k, ends, bias in model_shapes(args.model)}
    copy_bw = copy_bandwidth_Bps(dev, lambda fn: events_ms(fn, reps=5, rounds=7))
    print(f"copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    grid_args = (
        [tuple(t) for t in json.loads(args.tiles)] if args.tiles else DOT_TILES,
        json.loads(args.chunks) if args.chunks else CHUNKS,
        json.loads(args.stages),
        json.loads(args.compact) if args.compact else None,
        json.loads(args.k_iters) if args.k_iters else None,
        json.loads(args.caps),
        args.path,
    )
    impls = {"base": base}
    if args.kernel_file:
        impls["variant"] = load_kernel_module(Path(args.kernel_file))
    rows = []
    for case in args.cases:
        shape, sp, m = case.split(":")
        sp, m = float(sp), int(m)
        inputs = case_inputs(shapes[shape], m, sp, dev, copy_bw, impls.values())
        x, thr, ends, bias, w_ts = inputs.x, inputs.thr, inputs.ends, inputs.bias, inputs.w_ts
        ref, union, k = inputs.ref, inputs.union, inputs.k
        cublas_us, limit_us = inputs.cublas_us, inputs.limit_us
        print(f"\n{args.model} {shape} M={m} {sp:.0%}: union {union:.3f}, cuBLAS "
              f"{cublas_us:.2f} us, limit {limit_us:.2f} us", flush=True)  # fmt: skip
        tuned = kernels_json_config(args.model, shape, sp, m)
        cands = [("kernels.json", tuned)] if tuned else []
        cands += [("grid", c) for c in grid(k, m, *grid_args)]
        timed = []
        for (source, cfg), (impl, mod) in itertools.product(cands, impls.items()):
            if time.time() - t0 > args.budget_s:
                print("budget reached: remaining configs not timed", flush=True)
                break
            try:
                y = mod.sparse_gemv(x, w_ts[0], thr, ends, bias, config=cfg)
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                us = sequence_ms([functools.partial(mod.sparse_gemv, x, w, thr, ends, bias,
                                                    config=cfg) for w in w_ts]) * 1e3  # fmt: skip
            except Exception as e:  # a config Triton cannot compile for this shape
                print(f"  {impl} {cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            row = {"model": args.model, "shape": shape, "M": m, "sparsity": sp,
                   "union_kept": union, "source": source, "impl": impl, "config": cfg,
                   "us": us, "cublas_us": cublas_us, "limit_us": limit_us,
                   "speedup_vs_cublas": cublas_us / us, "max_rel_err": err}  # fmt: skip
            rows.append(row)
            if err <= MAX_REL_ERR:
                timed.append(row)
            else:
                print(f"  WRONG {impl} {cfg}: rel err {err:.2e}", flush=True)
            if source == "kernels.json":
                print(f"  kernels.json config, {impl}: {us:.2f} us ({cublas_us / us:.3f}x)",
                      flush=True)  # fmt: skip
        timed.sort(key=lambda r: r["us"])
        for r in timed[: args.top]:
            c = r["config"]
            print(f"  {r['us']:7.2f} us {r['speedup_vs_cublas']:6.3f}x  {c['BLOCK_N']}x"
                  f"{c['BLOCK_K']}x{c['K_ITERS']} w{c['num_warps']} s{c['num_stages']} "
                  f"compact={c['COMPACT']} splits={-(-k // (c['BLOCK_K'] * c['K_ITERS']))} "
                  f"({r['source']}, {r['impl']})", flush=True)  # fmt: skip
        if len(impls) > 1:  # same config, variant / base
            by = {(json.dumps(r["config"], sort_keys=True), r["impl"]): r["us"] for r in timed}
            ratios = sorted(v / by[(c, "base")] for (c, i), v in by.items()
                            if i == "variant" and (c, "base") in by)  # fmt: skip
            if ratios:
                best = {i: min(r["us"] for r in timed if r["impl"] == i) for i in impls}
                best_s = ", ".join(f"{i} {v:.2f} us" for i, v in best.items())
                print(f"  variant / base, same config: median {statistics.median(ratios):.3f}, "
                      f"min {ratios[0]:.3f}, max {ratios[-1]:.3f} over {len(ratios)}; best "
                      f"{best_s}", flush=True)  # fmt: skip
        del w_ts, inputs  # the weight copies: freed before the next case
        torch.cuda.empty_cache()
    write_results(args.out, rows, copy_bw, t0, "sequence protocol (kernels.py), bf16, explicit "
                  "configs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
