"""What the weight-aware score alone buys: uniform schedules ranked by |x| (TEAL's magnitude),
by |x_j|·‖W[:, j]‖₁ (WAS, the paper's L1 column norm) and by |x_j|·‖W[:, j]‖₂.

Every site gets the same sparsity (``teal-uniform`` / ``was-uniform``), so no allocation or
search is involved: the perplexity differences are the score's. Same models, texts and
evaluation as ``quality.py`` (calibration on *Pride and Prejudice*, perplexity on *Emma*, every
token sparsified). Writes ``benchmarks/results/score_ablation.json`` and prints a table.

    python benchmarks/score_ablation.py                       # both models, 40/50/60%
    python benchmarks/score_ablation.py --smoke               # tiny random model (checks it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # quality.py
from quality import MODELS, evaluate, make_smoke_model  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "score_ablation.json"
SCORES = (  # label, calibration column norm, schedule method
    ("magnitude (teal-uniform)", "l1", "teal-uniform"),
    ("was L1 (was-uniform)", "l1", "was-uniform"),
    ("was L2", "l2", "was-uniform"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="names or model paths")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.4, 0.5, 0.6])
    p.add_argument("--calib-text", default="austen:Pride & Prejudice")
    p.add_argument("--eval-text", default="austen:Emma")
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help=f"JSON (default {DEFAULT_OUT})")
    p.add_argument("--smoke", action="store_true", help="a tiny random model: checks the script")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from was_compile import calibrate, make_schedule
    from was_compile.data import load_text, token_windows
    from was_compile.models import load_model

    torch.set_num_threads(args.threads)
    models, texts = args.models, {"calib": args.calib_text, "eval": args.eval_text}
    out = args.out or DEFAULT_OUT
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="was_ablation_"))
        path, paths = make_smoke_model(tmp)
        models, texts = [path], {"calib": paths["calib"], "eval": paths["eval"]}
        out = args.out or tmp / "score_ablation.json"
    meta = {
        "benchmark": "uniform schedules, one score each; perplexity on held-out text",
        "device": "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "texts": texts, "windows": {
            "calib": args.calib_windows, "eval": args.eval_windows, "seq_len": args.seq_len},
        "smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    rows: list[dict] = []
    t0 = time.time()
    for name in models:
        model, tok, desc = load_model(name, dtype=torch.float32, device="cpu")
        model.requires_grad_(False)

        def windows(source: str, n: int, tok=tok):
            return token_windows(tok, load_text(source)[0], args.seq_len, n)

        calib = list(windows(texts["calib"], args.calib_windows).split(4))
        ev = windows(texts["eval"], args.eval_windows)
        cals = {norm: calibrate(model, calib, norm=norm, progress=False) for norm in ("l1", "l2")}
        dense, _, _ = evaluate(model, ev, None, 4, cals["l1"].sites)
        print(f"\n{desc}: dense perplexity {dense:.2f}")
        print(f"  {'sparsity':>8}  " + "  ".join(f"{label:>26}" for label, _, _ in SCORES))
        for s in args.sparsities:
            cells = []
            for label, norm, method in SCORES:
                sched = make_schedule(cals[norm], s, method)
                ppl, achieved, _ = evaluate(model, ev, sched.thresholds, 4, cals[norm].sites)
                rows.append({"model": desc, "source": name, "score": label, "sparsity": s,
                             "ppl": ppl, "dense_ppl": dense,
                             "achieved_sparsity": achieved})  # fmt: skip
                cells.append(f"{ppl:>17.1f} ({achieved:.1%})")
            print(f"  {s:>8.0%}  " + "  ".join(cells), flush=True)
    meta["elapsed_s"] = time.time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out} ({meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
