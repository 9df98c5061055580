"""Short GPU probe: the experimental PIPE=1 FMA path against the default path, same tiles.

For Llama-3-8B gate|up and down at M = 1 and 50 / 70% sparsity, with the tile the H100
autotuner chose for the default path (benchmarks/results/kernels.json), it times PIPE=0,
PIPE=1 and PIPE=1 capped at 128 registers (explicit configs: no autotuning), each output
checked against an fp32 reference. Timing as in kernels.py: one CUDA graph per call, L2
flushed, do_bench median. Meant for a GPU slot of about two minutes:

    python benchmarks/pipe_probe.py [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # timing.py (first already when run as a script)

CASES = [  # (shape, K, segment_ends, sparsity, tile chosen by the H100 tuner for PIPE=0)
    ("gate_up", 4096, [14336, 28672], 0.5, (256, 16, 64, 0)),
    ("gate_up", 4096, [14336, 28672], 0.7, (256, 16, 64, 0)),
    ("down", 14336, [4096], 0.5, (128, 32, 32, 1)),
    ("down", 14336, [4096], 0.7, (128, 32, 32, 1)),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/pipe_probe.json"))
    p.add_argument("--tiles", action="store_true", help="also PIPE=1 on other masked tiles")
    args = p.parse_args(argv)
    import torch
    import triton
    from timing import do_bench_ms, graph_ms

    from was_compile.kernels.triton_sparse_gemv import sparse_gemv
    from was_compile.kernels.tuning import make_activations, make_weight_t

    dev = torch.device("cuda")

    def bench(fn):
        fn()
        torch.cuda.synchronize()
        return graph_ms(fn, lambda replay: do_bench_ms(replay, warmup_ms=10, rep_ms=40))

    src = torch.randn(2**28, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * 2 / (bench(functools.partial(dst.copy_, src)) * 1e-3)
    del src, dst
    rows = []
    print(f"copy {copy_bw / 1e12:.2f} TB/s")
    print(f"{'shape':<8}{'sp':>5}{'variant':>16}{'us':>8}{'limit':>8}{'%lim':>6}{'err':>9}")
    for shape, k, ends, sp, (bn, bk, it, compact) in CASES:
        n = ends[-1]
        w_t = make_weight_t(n, k, torch.bfloat16, dev, seed=n + k)
        x, thr = make_activations(1, k, sp, torch.bfloat16, dev, len(ends), seed=1)
        ref = torch.empty(1, n, device=dev)
        kept_bytes, start = 0, 0
        for s, end in enumerate(ends):
            keep = x.float().abs() > thr[s]
            ref[:, start:end] = torch.where(keep, x.float(), 0.0) @ w_t[:, start:end].float()
            kept_bytes += int(keep.any(0).sum()) * (end - start) * 2
            start = end
        limit_us = kept_bytes / copy_bw * 1e6
        base = {"BLOCK_N": bn, "BLOCK_K": bk, "K_ITERS": it, "USE_DOT": 0, "COMPACT": compact,
                "num_warps": 4, "num_stages": 1}  # fmt: skip
        variants = [("pipe0", {}), ("pipe1", {"PIPE": 1}),
                    ("pipe1_maxnreg128", {"PIPE": 1, "maxnreg": 128})]  # fmt: skip
        if args.tiles:  # PIPE=1 at 128 registers on other masked tiles
            for tbn, tbk, tit in ((128, 32, 32), (256, 32, 32), (256, 16, 32), (128, 16, 64)):
                tile = {"BLOCK_N": tbn, "BLOCK_K": tbk, "K_ITERS": tit, "COMPACT": 0}
                variants.append((f"p1r128_{tbn}x{tbk}x{tit}", {**tile, "PIPE": 1, "maxnreg": 128}))
        for name, extra in variants:
            cfg = {**base, **extra}
            try:
                fn = functools.partial(sparse_gemv, x, w_t, thr, ends, config=cfg)
                y = fn()
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                us = bench(fn) * 1e3
            except Exception as e:  # noqa: BLE001 - report and go on: a probe
                print(f"{shape:<8}{sp:>5.2f}{name:>16}  failed: {type(e).__name__}: {e}")
                continue
            rows.append({"shape": shape, "K": k, "N": n, "M": 1, "sparsity": sp,
                         "variant": name, "config": cfg, "us": us, "limit_us": limit_us,
                         "fraction_of_limit": limit_us / us, "max_rel_err": err})  # fmt: skip
            print(f"{shape:<8}{sp:>5.2f}{name:>16}{us:>8.1f}{limit_us:>8.1f}"
                  f"{limit_us / us:>6.0%}{err:>9.1e}", flush=True)  # fmt: skip
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "copy_bandwidth_Bps": copy_bw,
            "timing": "CUDA graph replay, do_bench median (L2 flushed), rep 40 ms"}  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
