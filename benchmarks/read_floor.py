"""GPU probe: how fast can ONE kernel launch read a given number of bytes, timed as
``kernels.py`` times the GEMVs (kernel_notes section 24)?

Issue 4 asks the sparse GEMV for 90% of its byte limit (bytes that must be read / the copy
bandwidth of a 1 GiB device copy) at 25-70% sparsity. For the small shapes that limit is a
few microseconds, and a launch has fixed costs no GEMV can avoid. This probe measures them
with the least work a kernel can do on those bytes: each case's bytes (the limit bytes of
a ``kernels.json`` row) laid out contiguously, read once with 16-byte evict-first loads and
xor-folded into one int32 per CTA (so nothing is skipped), the best of a grid of
(CTA size, loads in flight per thread, CTAs) configs, in a CUDA graph of back-to-back calls
over distinct buffers (>= 3x L2, as ``graph_timing.sequence_ms``). Also timed: an empty
kernel launched the same way. If the best plain read of a case's bytes stays under 90% of
its limit, so does any GEMV that must read them.

    python benchmarks/read_floor.py --out benchmarks/results/read_floor.json
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

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

try:  # programmatic dependent launch (sm_90+); absent from older Triton builds
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: E402
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None

KERNELS_JSON = ROOT / "benchmarks" / "results" / "kernels.json"
# (int32 elements per CTA and load round, rounds per CTA, warps): 16-byte loads, 4-16 KB a
# round, 1-8 rounds unrolled, CTAs of 4 or 8 warps; the grid follows from the bytes
CONFIGS = [(b, it, w) for b in (1024, 2048, 4096) for it in (1, 2, 4, 8) for w in (4, 8)]


@triton.jit
def _read_kernel(src_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr,
                 PDL: tl.constexpr):  # fmt: skip
    """out[pid] = xor of src[pid * BLOCK * ITERS : (pid + 1) * BLOCK * ITERS] (int32).
    PDL: let the next launch's CTAs be scheduled at once, and wait for the previous grid (as
    a GEMV must, before it reads x) before reading."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pid = tl.program_id(0)
    offs = pid * (BLOCK * ITERS) + tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for i in tl.static_range(ITERS):
        o = offs + i * BLOCK
        acc ^= tl.load(src_ptr + o, mask=o < n, other=0, eviction_policy="evict_first")
    tl.store(out_ptr + pid, tl.xor_sum(acc, axis=0))


@triton.jit
def _empty_kernel(out_ptr):
    if tl.program_id(0) < 0:  # never: the launch and nothing else
        tl.store(out_ptr, 0)


def read_once(src, out, block: int, iters: int, warps: int, pdl: bool = False) -> None:
    n = src.numel()
    kw = {"launch_pdl": True} if pdl else {}
    _read_kernel[(triton.cdiv(n, block * iters),)](src, out, n, BLOCK=block, ITERS=iters,
                                                   PDL=pdl, num_warps=warps, **kw)  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Llama-3-8B")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.25, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--pdl", action="store_true",
                   help="also time the read with programmatic dependent launch (each call's "
                   "CTAs scheduled while the previous one drains; reads wait for it)")  # fmt: skip
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch
    from config_sweep import write_results
    from timing import copy_bandwidth_Bps

    from was_compile.kernels.graph_timing import copies_for, events_ms, l2_bytes, sequence_ms

    dev = torch.device("cuda")
    t0 = time.time()
    copy_bw = copy_bandwidth_Bps(dev, lambda fn: events_ms(fn, reps=5, rounds=7))
    print(f"copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    out = torch.empty(1 << 20, dtype=torch.int32, device=dev)
    empty = {}
    for grid in (132, 1024, 3584):
        calls = [functools.partial(_empty_kernel[(grid,)], out) for _ in range(16)]
        empty[grid] = sequence_ms(calls) * 1e3
        print(f"empty kernel, {grid} CTAs: {empty[grid]:.2f} us a launch", flush=True)
    rows = []
    cases = [r for r in json.loads(KERNELS_JSON.read_text())["rows"]
             if r["model"] == args.model and r["M"] == 1
             and r["sparsity"] in args.sparsities]  # fmt: skip
    for r in cases:
        nbytes = int(r["limit_us"] * 1e-6 * r["copy_bandwidth_Bps"])
        n = -(-nbytes // 16) * 4  # int32 elements, whole 16-byte vectors
        copies = copies_for(n * 4, l2_bytes(dev))
        bufs = [torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, device=dev)
                for _ in range(copies)]  # fmt: skip
        limit_us = n * 4 / copy_bw * 1e6
        best = {}
        for pdl in (False, True) if args.pdl else (False,):
            for block, iters, warps in CONFIGS:
                if triton.cdiv(n, block * iters) > out.numel():
                    continue
                calls = [functools.partial(read_once, b, out, block, iters, warps, pdl)
                         for b in bufs]  # fmt: skip
                us = sequence_ms(calls) * 1e3
                if pdl not in best or us < best[pdl][0]:
                    best[pdl] = (us, block, iters, warps)
        us, block, iters, warps = best[False]
        ctas = triton.cdiv(n, block * iters)
        print(f"{r['shape']:8} {r['sparsity']:.0%}: {n * 4 / 1e6:7.2f} MB  limit {limit_us:6.2f} us"
              f"  read {us:6.2f} us = {limit_us / us:5.1%} of limit  (90%: {limit_us / 0.9:6.2f}"
              f" us)  kernels.json GEMV {r['was_us']:6.2f} us  [{block} x {iters}, {warps} "
              f"warps, {ctas} CTAs]", flush=True)  # fmt: skip
        rows.append({"model": args.model, "shape": r["shape"], "sparsity": r["sparsity"],
                     "bytes": n * 4, "limit_us": limit_us, "read_us": us,
                     "read_fraction_of_limit": limit_us / us,
                     "config": {"BLOCK": block, "ITERS": iters, "num_warps": warps,
                                "ctas": ctas},
                     "gemv_us_kernels_json": r["was_us"],
                     "gemv_fraction_kernels_json": r["fraction_of_limit"],
                     "copies": copies})  # fmt: skip
        if True in best:
            us_p, block_p, iters_p, warps_p = best[True]
            rows[-1].update(read_pdl_us=us_p, read_pdl_fraction_of_limit=limit_us / us_p,
                            config_pdl={"BLOCK": block_p, "ITERS": iters_p,
                                        "num_warps": warps_p})  # fmt: skip
            print(f"{'':8} with PDL: read {us_p:6.2f} us = {limit_us / us_p:5.1%} of limit "
                  f"[{block_p} x {iters_p}, {warps_p} warps]", flush=True)  # fmt: skip
        del bufs
        torch.cuda.empty_cache()
    rows.append({"empty_kernel_us_by_ctas": empty})
    write_results(args.out, rows, copy_bw, t0,
                  "sequence protocol (kernels.py): one CUDA graph of back-to-back calls over "
                  "distinct buffers (>= 3x L2), median per call")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
