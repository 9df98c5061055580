"""``was tune`` for a model's shapes without its weights: the switch points measured on the GPU.

``was tune MODEL`` loads a model to find its sites; this runs the same tuning
(``was_compile.kernels.tuning.tune_shapes``: autotune every (N, K, M bucket, sparsity bucket),
then time the tuned kernel, cuBLAS and the op's masked dense path as decode runs them) on the
linear shapes of one of ``kernels.py``'s models, records the switch points in the on-disk table
(``$WAS_CACHE_DIR/switch_points.json``), and writes the rows with the device and versions to
``benchmarks/results/tune_<model>.json``.

    python benchmarks/tune_probe.py --model Llama-3.2-1B
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernels.py's shapes


def main(argv=None) -> int:
    from kernels import MODELS, model_shapes

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="Llama-3.2-1B", choices=list(MODELS))
    p.add_argument("--m", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.0, 0.5])
    p.add_argument("--out", help="JSON (default: benchmarks/results/tune_<model>.json)")
    args = p.parse_args(argv)
    import torch
    import triton

    from was_compile.kernels.switch_points import switch_rows, table_path
    from was_compile.kernels.tuning import tune_shapes

    if not torch.cuda.is_available():
        print("tune_probe.py needs a CUDA GPU", file=sys.stderr)
        return 2
    shapes, segments = [], {}
    for _, k, ends, _bias in model_shapes(args.model):
        shapes.append((ends[-1], k))
        segments[(ends[-1], k)] = ends
    t0 = time.time()
    rows = tune_shapes(shapes, torch.bfloat16, tuple(args.m), tuple(args.sparsities), segments)
    points = switch_rows(rows)
    print(f"{'N':>6}{'K':>6}{'M':>4}{'sp':>6}{'kernel':>9}{'cuBLAS':>9}{'masked':>9}  config")
    for r in rows:
        print(f"{r['N']:>6}{r['K']:>6}{r['M']:>4}{r['sparsity']:>6.2f}{r['time_us']:>9.1f}"
              f"{r['cublas_us']:>9.1f}{r['prefill_us']:>9.1f}  {r['config']}")  # fmt: skip
    print(f"switch points (kernel up to M rows, else masked dense), saved in {table_path()}:")
    for (k, ends, bucket), limit in sorted(points.items()):
        print(f"  K={k} segment_ends={list(ends)} sparsity bucket {bucket}: M <= {limit}")
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"tune_{args.model}.json"
    )
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "model": args.model, "dtype": "bfloat16",
            "timing": "graph_timing.sequence_ms (back to back over weight copies, no flush)",
            "elapsed_s": time.time() - t0}  # fmt: skip
    switch = [{"K": k, "segment_ends": list(e), "sparsity_bucket": b, "max_rows": v}
              for (k, e, b), v in sorted(points.items())]  # fmt: skip
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows, "switch_points": switch}, f, indent=1)
    print(f"wrote {out} ({meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
