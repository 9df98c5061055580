"""GPU probe: does the GEMV tuner pick the same config twice, and is its pick the fastest?

Written when a kernels.json run had M = 8 rows slower than the run before it (2026-11-24):
either the tuner's ranking is noisy (candidates within a few percent, each timed once with
fewer replays than kernels.py) or its timings disagree with a later careful timing. This
probe runs the tuner several times from an empty cache on one call's inputs, keeps every
candidate's time, then times each candidate that was ever among the first three again, back
to back, with kernels.py's replay counts. (The answer then, results/tuner_stability.json: the
picks repeat and are the fastest finalists; the kernel had changed, kernel_notes section 15.)

    python benchmarks/tuner_stability.py --cases down:8:0.5 gate_up:8:0.5 qkv:4:0.5
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tile_probe import SHAPES  # noqa: E402  (Llama-3-8B: name -> (K, segment ends))


def _tag(cfg: dict) -> str:
    return (f"{cfg['BLOCK_N']}x{cfg['BLOCK_K']}x{cfg['K_ITERS']} dot={cfg['USE_DOT']} "
            f"c={cfg.get('COMPACT', 0)} wide={cfg.get('WIDE', 0)} w{cfg.get('num_warps')} "
            f"s{cfg.get('num_stages')} r{cfg.get('maxnreg', '-')}")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["down:8:0.5", "gate_up:8:0.5", "qkv:4:0.5"],
                   help="SHAPE:M:SPARSITY (Llama-3-8B shapes)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="tuner runs from an empty cache")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/tuner_stability.json"))
    args = p.parse_args(argv)

    import os

    import torch
    import triton

    from was_compile.kernels import gemv_tuner
    from was_compile.kernels import triton_sparse_gemv as tsg
    from was_compile.kernels.graph_timing import copies_for, l2_bytes, sequence_ms
    from was_compile.kernels.tuning import make_activations, make_weight_t

    dev = torch.device("cuda")
    rows = []
    for case in args.cases:
        shape, m, sp = case.split(":")
        m, sp = int(m), float(sp)
        k, ends = SHAPES[shape]
        n = ends[-1]
        x, thr = make_activations(m, k, sp, torch.bfloat16, dev, len(ends), seed=1)
        copies = copies_for(k * n * 2, l2_bytes(dev))
        w_ts = [make_weight_t(n, k, torch.bfloat16, dev, seed=n + k + i) for i in range(copies)]
        tsg.reserve_workspace_for(w_ts[0], ends)
        runs = []
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["WAS_CACHE_DIR"] = tmp
                gemv_tuner._MEMO.clear()
                gemv_tuner._LOADED.clear()
                tsg._CHOSEN.clear()
                tsg.sparse_gemv(x, w_ts[0], thr, ends, sparsity_hint=sp)
                (entry,) = json.loads(gemv_tuner.cache_path().read_text()).values()
            timed = sorted((t for t in entry["timed"] if t["us"] is not None),
                           key=lambda t: t["us"])  # fmt: skip
            runs.append({"pick": entry["config"], "us": entry["us"], "timed": entry["timed"]})
            print(f"{case} tuner run {r}: " + "; ".join(
                f"{_tag(t['config'])} {t['us']:.1f}" for t in timed[:4]), flush=True)  # fmt: skip
        finalists = []
        for run in runs:
            ranked = sorted((t for t in run["timed"] if t["us"] is not None),
                            key=lambda t: t["us"])  # fmt: skip
            for t in ranked[:3] + [{"config": run["pick"]}]:
                if t["config"] not in finalists:
                    finalists.append(t["config"])
        careful = []
        for cfg in finalists:
            calls = [functools.partial(tsg.sparse_gemv, x, w, thr, ends, config=cfg)
                     for w in w_ts]  # fmt: skip
            us = sequence_ms(calls) * 1e3  # kernels.py's counts: 20 replays x 7 rounds
            tuner_us = [next((t["us"] for t in run["timed"] if t["config"] == cfg), None)
                        for run in runs]  # fmt: skip
            careful.append({"config": cfg, "us": us, "tuner_us": tuner_us})
            print(
                f"  careful {_tag(cfg):<52} {us:7.1f} us   tuner runs "
                + " ".join("-" if v is None else f"{v:.1f}" for v in tuner_us),
                flush=True,
            )
        best = min(careful, key=lambda c: c["us"])
        for i, run in enumerate(runs):
            pick_us = next(c["us"] for c in careful if c["config"] == run["pick"])
            print(f"  run {i} pick is {pick_us / best['us']:.3f}x the fastest finalist")
        rows.append({"case": case, "shape": shape, "K": k, "N": n, "M": m, "sparsity": sp,
                     "runs": runs, "finalists": careful, "fastest": best["config"]})  # fmt: skip
        del w_ts
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "command": " ".join(sys.argv),
            "what": "tuner picks from an empty cache, repeated; finalists re-timed with "
                    "sequence_ms(reps=20, rounds=7)"}  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
