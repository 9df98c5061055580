"""What the weight-aware score alone buys, and what it lacks: uniform schedules ranked by |x|
(TEAL's magnitude), by |x_j|·‖W[:, j]‖₁ (WAS, the paper's L1 column norm), by |x_j|·‖W[:, j]‖₂,
and by variants that probe why the column norm can lose to magnitude:

* ``grad L2``: |x_j|·‖diag(g) W[:, j]‖₂ with g [out] the RMS over calibration tokens of the
  loss gradient at the site's output: a dropped channel's error weighted by how much each
  output row matters downstream (post-norms, v -> o, up -> act · down), found by one backward
  pass, not from the model's structure;
* ``grad L2 ^ 0.5``: the same weights square-rooted, halfway between magnitude and ``grad L2``;
* ``+ mean``: the L1 or magnitude thresholds, plus a fixed output bias W·m per site, m [in] the
  mean of the inputs the thresholds drop (on calibration text, the model sparsified), which
  removes the systematic part of the error;
* ``first token dense``: the magnitude or L1 thresholds with each window's first token left
  dense (the attention sink every later token reads), as when a one-token prompt is
  prefilled dense (the backend's default ``prefill="dense"``): not a score, the protocol.

Every site gets the same sparsity, so no allocation or search is involved: the perplexity
differences are the score's. Same models, texts and evaluation as ``quality.py``
(calibration on *Pride and Prejudice*, perplexity on *Emma*, every token sparsified). Writes
``benchmarks/results/score_ablation.json`` and prints a table.

    python benchmarks/score_ablation.py                       # both models, 40/50/60%
    python benchmarks/score_ablation.py --smoke               # tiny random model (checks it)
    python benchmarks/score_ablation.py --components --sparsities 0.6 0.4

``--components`` asks where the column norm helps and where it costs: per component kind
(q, k, v, o, gate, up, down), the WAS thresholds on that kind's sites and magnitude
thresholds on all others ("was on K"), and the converse ("was except K"), every site at the
same sparsity; writes ``benchmarks/results/score_components.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # quality.py
from quality import MODELS, evaluate, make_smoke_model  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "score_ablation.json"
COMPONENTS_OUT = DEFAULT_OUT.with_name("score_components.json")
LIBRARY_SCORES = (  # label, calibration column norm, schedule method (the library's path)
    ("magnitude (teal-uniform)", "l1", "teal-uniform"),
    ("was L1 (was-uniform)", "l1", "was-uniform"),
    ("was L2", "l2", "was-uniform"),
)
PROBES = ("grad L2", "grad L2 ^ 0.5", "magnitude + mean", "was L1 + mean")
FIRST_DENSE = ("magnitude, first token dense", "was L1, first token dense")
SCORES = tuple(label for label, _, _ in LIBRARY_SCORES) + PROBES + FIRST_DENSE


def _library_base(label: str) -> str:
    """The library score whose thresholds a "+ mean" / "first token dense" probe reuses."""
    return LIBRARY_SCORES[0][0] if label.startswith("magnitude") else LIBRARY_SCORES[1][0]


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
    p.add_argument(
        "--components",
        action="store_true",
        help="WAS on one component kind, magnitude on the rest (and the converse)",
    )
    return p.parse_args(argv)


def loss_gradient_gains(model, sites, batches) -> dict:
    """Site name -> RMS over calibration tokens of d(next-token loss)/d(site output), [out]."""
    import torch

    sums = {s.name: torch.zeros(s.out_features, dtype=torch.float64) for s in sites}
    outputs: dict = {}
    tokens = 0

    def keep_output(name):
        def hook(module, args, out):  # noqa: ANN001
            out.retain_grad()
            outputs[name] = out

        return hook

    handles = [model.get_submodule(s.name).register_forward_hook(keep_output(s.name))
               for s in sites]  # fmt: skip
    # the weights stay frozen: gradients flow from the embeddings' output onwards
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, a, out: out.requires_grad_()))
    try:
        with torch.enable_grad():
            for ids in batches:
                outputs.clear()
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                for name, out in outputs.items():
                    g = out.grad.reshape(-1, out.shape[-1]).double()
                    sums[name] += g.pow(2).sum(0)
                tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return {n: (v / tokens).sqrt().float() for n, v in sums.items()}


def weighted_thresholds(model, sites, batches, weights: dict, sparsities) -> dict:
    """For channel weights w [in] per site: thresholds tau = t / w [in] with t the
    ``sparsity`` quantile of |x_j|·w_j on ``batches``, by sparsity then site name."""
    import torch

    from was_compile.schedules.calibration import LogHistogram
    from was_compile.schedules.schedule_file import thresholds_from_scalar

    hists = {s.name: LogHistogram() for s in sites}

    def record(name):
        def hook(module, args):  # noqa: ANN001
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()
            hists[name].add(x * weights[name])

        return hook

    handles = [model.get_submodule(s.name).register_forward_pre_hook(record(s.name))
               for s in sites]  # fmt: skip
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {sp: {n: thresholds_from_scalar(hists[n].quantile(sp), weights[n]) for n in hists}
            for sp in sparsities}  # fmt: skip


def dropped_input_means(model, sites, batches, thresholds: dict) -> dict:
    """Site name -> mean over tokens of the input channels ``thresholds`` zero, [in], with the
    model sparsified by them (what the site loses on average)."""
    import torch

    sums = {s.name: torch.zeros(s.in_features, dtype=torch.float64) for s in sites}
    count = {"tokens": 0}

    def record(name, tau):
        def hook(module, args):  # noqa: ANN001
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] += torch.where(x.abs() > tau, 0.0, x).double().sum(0)

        return hook

    handles = [model.get_submodule(s.name).register_forward_pre_hook(
        record(s.name, thresholds[s.name])) for s in sites]  # fmt: skip
    from was_compile import masked_inputs

    try:
        with torch.no_grad(), masked_inputs(model, thresholds):
            for ids in batches:
                model(input_ids=ids, use_cache=False)
                count["tokens"] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return {n: (v / count["tokens"]).float() for n, v in sums.items()}


def component_swaps(teal: dict, was: dict, sites) -> dict:
    """Label -> thresholds: "teal", "was", and per component kind K "was on K" (WAS
    thresholds on K's sites, magnitude elsewhere) and "was except K" (the converse)."""
    out = {"teal": teal, "was": was}
    for kind in sorted({s.kind for s in sites}):
        out[f"was on {kind}"] = {s.name: (was if s.kind == kind else teal)[s.name] for s in sites}
        out[f"was except {kind}"] = {s.name: (teal if s.kind == kind else was)[s.name]
                                     for s in sites}  # fmt: skip
    return out


@contextmanager
def output_biases(model, biases: dict):
    """Inside the block, each named module's output gets ``biases[name]`` [out] added."""
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, out, b=b: out + b)
               for n, b in biases.items()]  # fmt: skip
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def component_rows(model, source: str, desc: str, calib, ev, sparsities) -> list[dict]:
    """Rows of ``--components`` for one model: every ``component_swaps`` variant at each
    sparsity, printed as they come."""
    from was_compile import calibrate, make_schedule

    cal = calibrate(model, calib, progress=False)
    sites = cal.sites
    dense, _, _ = evaluate(model, ev, None, 4, sites)
    print(f"\n{desc}: dense perplexity {dense:.2f}")
    rows = []
    for s in sparsities:
        swaps = component_swaps(make_schedule(cal, s, "teal-uniform").thresholds,
                                make_schedule(cal, s, "was-uniform").thresholds, sites)  # fmt: skip
        cells = []
        for label, th in swaps.items():
            ppl, achieved, _ = evaluate(model, ev, th, 4, sites)
            rows.append({"model": desc, "source": source, "score": label, "sparsity": s,
                         "ppl": ppl, "dense_ppl": dense,
                         "achieved_sparsity": achieved})  # fmt: skip
            cells.append(f"{label} {ppl:.1f}")
        print(f"  {s:.0%}: " + ", ".join(cells), flush=True)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from was_compile import calibrate, make_schedule
    from was_compile.data import load_text, token_windows
    from was_compile.models import load_model
    from was_compile.schedules.postnorm import weighted_column_norms

    torch.set_num_threads(args.threads)
    models, texts = args.models, {"calib": args.calib_text, "eval": args.eval_text}
    out = args.out or (COMPONENTS_OUT if args.components else DEFAULT_OUT)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="was_ablation_"))
        path, paths = make_smoke_model(tmp)
        models, texts = [path], {"calib": paths["calib"], "eval": paths["eval"]}
        out = args.out or tmp / (COMPONENTS_OUT if args.components else DEFAULT_OUT).name
    meta = {
        "benchmark": "uniform schedules, one score each; perplexity on held-out text",
        "device": "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "texts": texts, "windows": {
            "calib": args.calib_windows, "eval": args.eval_windows, "seq_len": args.seq_len},
        "scores": {"grad L2": "|x_j| * ||diag(g) W[:, j]||_2, g = RMS loss gradient at the "
                   "site's output (calibration text)", "grad L2 ^ 0.5": "|x_j| * "
                   "||diag(g) W[:, j]||_2 ** 0.5", "+ mean": "the score's thresholds, plus "
                   "the output bias W m, m = mean dropped input (calibration text, sparsified)",
                   "first token dense": "each evaluated window's first token not masked"},
        "smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    if args.components:
        meta["benchmark"] = ("uniform schedules; WAS (L1) thresholds on one component kind "
                             "and magnitude (teal-uniform) thresholds on the others, or the "
                             "converse; perplexity on held-out text")  # fmt: skip
        meta.pop("scores")
    rows: list[dict] = []
    t0 = time.time()
    for name in models:
        model, tok, desc = load_model(name, dtype=torch.float32, device="cpu")
        model.requires_grad_(False)

        def windows(source: str, n: int, tok=tok):
            return token_windows(tok, load_text(source)[0], args.seq_len, n)

        calib = list(windows(texts["calib"], args.calib_windows).split(4))
        ev = windows(texts["eval"], args.eval_windows)
        if args.components:
            rows += component_rows(model, name, desc, calib, ev, args.sparsities)
            continue
        cals = {norm: calibrate(model, calib, norm=norm, progress=False) for norm in ("l1", "l2")}
        sites = cals["l1"].sites
        gains = loss_gradient_gains(model, sites, calib)
        grad_l2 = {s.name: weighted_column_norms(s.weight(model), "l2", gains[s.name])
                   for s in sites}  # fmt: skip
        probes = {
            "grad L2": weighted_thresholds(model, sites, calib, grad_l2, args.sparsities),
            "grad L2 ^ 0.5": weighted_thresholds(
                model, sites, calib, {n: w.sqrt() for n, w in grad_l2.items()}, args.sparsities
            ),
        }
        dense, _, _ = evaluate(model, ev, None, 4, sites)
        print(f"\n{desc}: dense perplexity {dense:.2f}")
        print(f"  {'sparsity':>8}  " + "  ".join(f"{label:>24}" for label in SCORES))
        for s in args.sparsities:
            cells = []
            thresholds = {}
            for label, norm, method in LIBRARY_SCORES:
                thresholds[label] = make_schedule(cals[norm], s, method).thresholds
            thresholds.update({label: by_sp[s] for label, by_sp in probes.items()})
            for label in SCORES:
                if label.endswith(" + mean"):
                    th = thresholds[_library_base(label)]
                    means = dropped_input_means(model, sites, calib, th)
                    biases = {n.name: n.weight(model).float() @ means[n.name] for n in sites}
                    with output_biases(model, biases):
                        ppl, achieved, _ = evaluate(model, ev, th, 4, sites)
                elif label in FIRST_DENSE:
                    th = thresholds[_library_base(label)]
                    ppl, achieved, _ = evaluate(model, ev, th, 4, sites, dense_prefix=1)
                else:
                    ppl, achieved, _ = evaluate(model, ev, thresholds[label], 4, sites)
                rows.append({"model": desc, "source": name, "score": label, "sparsity": s,
                             "ppl": ppl, "dense_ppl": dense,
                             "achieved_sparsity": achieved})  # fmt: skip
                cells.append(f"{ppl:>15.1f} ({achieved:.1%})")
            print(f"  {s:>8.0%}  " + "  ".join(cells), flush=True)
    meta["elapsed_s"] = time.time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out} ({meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
