"""Quality benchmark: perplexity of sparsity schedules on real pretrained decoders (CPU).

For each model, at each model-level sparsity (byte-weighted over the sites' weights), the
perplexity on held-out English text of the schedules made by each method:

* ``teal-uniform`` / ``was-uniform``: the same sparsity at every site (magnitude / weight-aware
  thresholds);
* ``teal`` / ``was-greedy``: every block at the budget, split among its components greedily
  (magnitude / weight-aware);
* ``was-tpe``: weight-aware, greedy inside blocks, constrained TPE across blocks.

Protocol (three disjoint texts):

* calibration (score statistics, greedy trajectories, threshold refinement): "Pride and
  Prejudice", ``--calib-windows`` x ``--seq-len`` tokens;
* TPE search objective: "Persuasion", ``--search-windows`` x ``--seq-len`` tokens;
* evaluation: "Emma", ``--eval-windows`` x ``--seq-len`` tokens.

Every schedule gets the same treatment: ``refine_schedule(model, schedule, calibration
batches)`` in its sequential mode (thresholds re-read, block by block, under the schedule's
own upstream sparsity), so every site of every method meets its target exactly on the
calibration text; what remains between nominal and achieved on the evaluation text is the
shift from one novel to another.
Evaluation sparsifies every token of every window (eager ``masked_inputs`` over the whole
sequence, as in decoding) and counts the channels zeroed at each site in the same pass; the
ACHIEVED byte-weighted sparsity on the evaluation text is reported next to the nominal one.
(The counts are those of :func:`was_compile.measured_sparsity`, which runs the same hooks;
``--smoke`` checks that both agree.)

Models: ``smollm2`` (SmolLM2-135M-Instruct) and ``gemma3-270m`` (Gemma-3-270M base), both
packaged 4-bit GGUFs dequantised to float32; ``--model PATH`` adds any model
:func:`was_compile.models.load_model` accepts (an HF folder or a .gguf).

    python benchmarks/quality.py                                  # both models, all methods
    python benchmarks/quality.py --models smollm2 --trials 20
    python benchmarks/quality.py --models gemma3-270m --sparsities 0.4 0.5 0.6 --merge
    python benchmarks/quality.py --smoke --out /tmp/q            # tiny random Llama, < 60 s
    python benchmarks/quality.py --jobs 2                         # one process per model

The greedy block error is measured on every token (``--greedy-error-fraction 1``), as the
evaluation sparsifies every token, each token's error relative to its own norm (the first
token of Gemma, an attention sink with a massive residual norm, is where weight-aware
thresholds did most harm: left dense, was-uniform at 60% went from 331 to 183 perplexity).

Results: ``--out`` (a directory or a .json path; default benchmarks/results/quality.json) is
rewritten after every (model, method, sparsity), so an interrupted run loses nothing; the TPE
studies live in SQLite under ``<out dir>/cache/`` (with the greedy trajectories), so a rerun
resumes them. ``--plot`` (default on) writes the perplexity-vs-sparsity figure next to it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

METHODS = ("teal-uniform", "teal", "was-uniform", "was-greedy", "was-tpe")
SPARSITIES = (0.25, 0.40, 0.50, 0.60, 0.70)
MODELS = ("smollm2", "gemma3-270m")
GREEDY_SCORE = {"teal": "mag", "was-greedy": "was", "was-tpe": "was"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"model names or paths (default: {' '.join(MODELS)})",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH",
        help="another model (HF folder or .gguf); may repeat",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    p.add_argument(
        "--trials", type=int, default=20, help="TPE trials per sparsity (the paper uses 50)"
    )
    p.add_argument("--objective", default="ppl", choices=["ppl", "kl"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--delta",
        type=float,
        default=None,
        help="TPE: per-block offsets +-delta (default: 0 with --allocation sensitivity, alpha "
        "alone; 0.05 with --allocation uniform, the band around the budget)",
    )
    p.add_argument(
        "--allocation",
        default="sensitivity",
        choices=["sensitivity", "uniform"],
        help="TPE: search along measured block sensitivities (search text), or the monotone "
        "band around the budget",
    )
    p.add_argument(
        "--spread", type=float, default=0.2, help="TPE (sensitivity): blocks within +-spread"
    )
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--search-windows", type=int, default=4)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=2, help="windows per forward")
    p.add_argument("--calib-text", default="austen:Pride & Prejudice")
    p.add_argument("--search-text", default="austen:Persuasion")
    p.add_argument("--eval-text", default="austen:Emma")
    p.add_argument(
        "--dense-prefix",
        type=int,
        default=0,
        help="positions of every window left dense in search and evaluation (a prompt "
        "prefilled dense, as the backend does; 0: every token sparsified)",
    )
    p.add_argument(
        "--greedy-tokens",
        type=int,
        default=256,
        help="greedy: calibration tokens whose block outputs are compared",
    )
    p.add_argument("--greedy-step", type=float, default=0.25, help="greedy base_step")
    p.add_argument(
        "--greedy-max-step",
        type=float,
        default=0.15,
        help="greedy: largest step of one component (k/v of GQA models)",
    )
    p.add_argument(
        "--greedy-error-fraction",
        type=float,
        default=1.0,
        help="greedy: last fraction of each sequence's tokens whose error counts",
    )
    p.add_argument(
        "--greedy-lazy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lazy greedy (about n_components times fewer block forwards)",
    )
    p.add_argument(
        "--refine",
        default="sequential",
        choices=["sequential", "iterative"],
        help="threshold refinement of every schedule (iterative: 1 pass)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="models measured in parallel, one process each (with --threads each)",
    )
    p.add_argument(
        "--greedy-max",
        type=float,
        default=0.8,
        help="greedy max_block_sparsity (beyond: linear to the cap)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a shared 2-core machine, 2 threads thrashed, 7x slower)",
    )
    p.add_argument(
        "--out",
        default=str(HERE / "results" / "quality.json"),
        help="JSON path, or a directory to write quality.json into",
    )
    p.add_argument("--cache-dir", default=None, help="default: <out dir>/cache")
    p.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the figure (.png next to the JSON)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep rows of --out that this run does not measure again",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny random Llama + short text, 2 sparsities, 3 trials (< 60 s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device for the model, calibration, search and evaluation (cpu, cuda, "
        "cuda:1; float32 throughout, TF32 off)",
    )
    args = p.parse_args(argv)
    args.device = check_device(p, args.device)
    out = Path(args.out)
    if out.suffix != ".json":
        out = out / "quality.json"
    args.out = out
    args.cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    from was_compile.schedules.tpe import resolve_delta

    # resolved here, once: the TPE study names, settings and meta all carry the value used
    args.delta = resolve_delta(args.delta, args.allocation)
    if args.smoke:
        args.sparsities = [0.4, 0.6]
        args.trials = 3
        args.calib_windows, args.search_windows, args.eval_windows = 4, 2, 2
        args.seq_len = 32
        args.greedy_tokens = 64
        args.greedy_step, args.greedy_max = 0.4, 0.7
        args.quiet = True
    return args


def check_device(parser: argparse.ArgumentParser, name: str) -> str:
    """``name`` if torch can run there (else the parser exits with what to do instead)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        parser.error(f"--device {name!r} is not a torch device ({e})")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; "
                     "run on the CPU (--device cpu, the default)")  # fmt: skip
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda devices are supported")
    return name


def device_description(name: str, threads: int) -> str:
    """What ran the benchmark, for the JSON's meta."""
    import torch

    if torch.device(name).type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(torch.device(name))} (float32, TF32 off)"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores visible, shared; torch threads {threads}"


# --------------------------------------------------------------------------------------------
# Smoke model
# --------------------------------------------------------------------------------------------


def make_smoke_model(directory: Path) -> tuple[str, dict[str, str]]:
    """A tiny random Llama + a BPE tokenizer trained on Python's pydoc prose, saved under
    ``directory``; the prose is cut into three disjoint text files. Returns (model path,
    {"calib"|"search"|"eval": text path})."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from was_compile.data import fallback_text

    text = fallback_text()[:120_000]
    thirds = len(text) // 3
    parts = {
        "calib": text[:thirds],
        "search": text[thirds : 2 * thirds],
        "eval": text[2 * thirds :],
    }
    paths = {}
    for k, v in parts.items():
        paths[k] = str(directory / f"{k}.txt")
        Path(paths[k]).write_text(v, encoding="utf-8")
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([parts["calib"]], trainer)
    tok = T.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        max_position_embeddings=128,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    mdir = directory / "tiny-llama"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    return str(mdir), paths


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def evaluate(
    model, windows, thresholds, batch: int, sites, dense_prefix: int | None = None
) -> tuple[float, float, dict]:
    """(perplexity, achieved byte-weighted sparsity, per-site measured sparsity) on ``windows``
    [n, T], every token of every window sparsified with ``thresholds`` (none: dense), except
    the first ``dense_prefix`` of each window (a prompt prefilled dense; None: the
    enclosing ``dense_prompt``'s)."""
    import torch

    from was_compile import masked_inputs
    from was_compile.schedules.schedule_file import byte_weighted_sparsity

    counts: dict[str, list[int]] = {}
    nll, n = 0.0, 0
    with torch.no_grad(), masked_inputs(model, thresholds or {}, counts, dense_prefix):
        device = next(model.parameters()).device
        for ids in windows.split(batch):
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                )
            )
            n += ids.shape[0] * (ids.shape[1] - 1)
    measured = {k: c[0] / c[1] for k, c in counts.items()}
    achieved = byte_weighted_sparsity(sites, measured)
    return math.exp(nll / n), (achieved if thresholds else 0.0), measured


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name or name)


# --------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------


class Results:
    def __init__(self, path: Path, meta: dict, merge: bool):
        self.path, self.meta, self.rows, self.models = path, meta, [], {}
        self.kept_rows, self.kept_models = [], {}
        if merge and path.is_file():
            old = json.loads(path.read_text())
            self.kept_rows = old.get("rows", [])
            self.kept_models = old.get("models", {})
            prev = old.get("meta", {})
            for k in ("methods", "sparsities"):  # the union over the merged runs
                meta[k] = sorted(set(prev.get(k, [])) | set(meta[k]), key=str)
            meta["runs"] = prev.get("runs", [prev.get("command")]) + meta["runs"]

    def add_model(self, key: str, info: dict) -> None:
        self.models[key] = info
        self.write()

    def add_row(self, row: dict) -> None:
        self.rows = [r for r in self.rows if _key(r) != _key(row)] + [row]
        self.write()

    def all_rows(self) -> list[dict]:
        mine = {_key(r) for r in self.rows}
        return [r for r in self.kept_rows if _key(r) not in mine] + self.rows

    def all_models(self) -> dict:
        return {**self.kept_models, **self.models}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": self.meta, "models": self.all_models(), "rows": self.all_rows()}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)


def _key(r: dict) -> tuple:
    return (r["model"], r["method"], round(r["sparsity"], 6))


# --------------------------------------------------------------------------------------------
# Tables, targets, plot
# --------------------------------------------------------------------------------------------


def table(model_key: str, info: dict, rows: list[dict]) -> str:
    rows = [r for r in rows if r["model"] == model_key]
    sps = sorted({round(r["sparsity"], 6) for r in rows})
    lines = [
        f"{info.get('description', model_key)}",
        f"  perplexity on {info.get('eval_tokens', '?')} tokens of held-out text "
        f"(dense {info.get('dense_ppl', float('nan')):.2f}); cell: ppl [achieved sparsity]",
    ]
    head = f"  {'method':<13}" + "".join(f"{f'{s:.0%}':>18}" for s in sps)
    lines.append(head)
    for m in METHODS:
        mrows = {round(r["sparsity"], 6): r for r in rows if r["method"] == m}
        if not mrows:
            continue
        cells = []
        for s in sps:
            r = mrows.get(s)
            cells.append(f"{r['ppl']:>10.2f} [{r['achieved_sparsity']:.1%}]" if r else f"{'-':>18}")
        lines.append(f"  {m:<13}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def targets(model_key: str, rows: list[dict]) -> list[dict]:
    """was-tpe's ppl increase over dense <= 0.6x teal's at 60%; below teal's at 40%, 50%."""
    by = {(r["method"], round(r["sparsity"], 6)): r for r in rows if r["model"] == model_key}
    checks = []
    for s, factor, rel in ((0.6, 0.6, "<="), (0.4, 1.0, "<"), (0.5, 1.0, "<")):
        t, w = by.get(("teal", s)), by.get(("was-tpe", s))
        if t is None or w is None:
            checks.append(
                {
                    "sparsity": s,
                    "status": "MISSING",
                    "rule": f"was-tpe increase {rel} {factor} x teal increase",
                }
            )
            continue
        ti, wi = t["ppl_increase"], w["ppl_increase"]
        ok = wi <= factor * ti if rel == "<=" else wi < factor * ti
        checks.append(
            {
                "sparsity": s,
                "status": "PASS" if ok else "FAIL",
                "rule": f"was-tpe increase {rel} {factor} x teal increase",
                "was_tpe_increase": wi,
                "teal_increase": ti,
                "ratio": wi / ti if ti else None,
            }
        )
    return checks


def plot(path: Path, models: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in models if any(r["model"] == k for r in rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        info = models[key]
        for m in METHODS:
            mr = sorted(
                (r for r in rows if r["model"] == key and r["method"] == m),
                key=lambda r: r["sparsity"],
            )
            if mr:
                ax.plot(
                    [100 * r["sparsity"] for r in mr],
                    [r["ppl"] for r in mr],
                    "o-",
                    label=m,
                    lw=2 if m == "was-tpe" else 1.2,
                )
        if "dense_ppl" in info:
            ax.axhline(
                info["dense_ppl"], color="k", ls="--", lw=1, label=f"dense {info['dense_ppl']:.1f}"
            )
        ax.set_yscale("log")
        ax.set_xlabel("model-level sparsity, byte-weighted (%)")
        ax.set_ylabel("perplexity (held-out)")
        ax.set_title(info.get("short", key), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run_model(args, name: str, texts: dict, results: Results, log) -> None:
    import torch

    from was_compile import calibrate, make_schedule
    from was_compile.data import load_text, token_windows
    from was_compile.models import load_model
    from was_compile.schedules.greedy import GreedyTrajectories, greedy_trajectories
    from was_compile.schedules.refine import refine_schedule
    from was_compile.sites import sites_fingerprint

    progress = not args.quiet
    t0 = time.time()
    model, tok, description = load_model(name, dtype=torch.float32, device=args.device)
    model.requires_grad_(False)
    key = "smoke-tiny-llama" if args.smoke else slug(name)
    log(f"\n=== {description} (loaded in {time.time() - t0:.0f} s)")

    data = {}
    windows = {}
    for role, n in (
        ("calib", args.calib_windows),
        ("search", args.search_windows),
        ("eval", args.eval_windows),
    ):
        text, desc = load_text(texts[role])
        windows[role] = token_windows(tok, text, args.seq_len, n)
        data[role] = {
            "source": texts[role],
            "description": desc,
            "windows": n,
            "seq_len": args.seq_len,
            "tokens": n * args.seq_len,
        }
    calib = list(windows["calib"].split(args.batch))
    search = list(windows["search"].split(args.batch))

    t = time.time()
    cal = calibrate(model, calib, source=data["calib"]["description"], progress=False)
    sites = list(cal.sites)
    calib_s = time.time() - t
    fp = sites_fingerprint(sites)
    og = "-og" if cal.gains else ""  # output-norm gains folded into the column norms
    dp = f"-dp{args.dense_prefix}" if args.dense_prefix else ""
    og += dp  # searches measured after a dense prompt are cached apart
    dense_ppl, _, _ = evaluate(model, windows["eval"], None, args.batch, sites)
    log(
        f"calibration {calib_s:.0f} s on {data['calib']['tokens']} tokens; "
        f"{len(sites)} sites; dense perplexity {dense_ppl:.3f}"
    )
    info = {
        "description": description,
        "short": description.split(" (")[0]
        + (" (4-bit GGUF -> fp32)" if "GGUF" in description else ""),
        "source": name,
        "dense_ppl": dense_ppl,
        "n_sites": len(sites),
        "output_gains": sorted(cal.gains),
        "site_weight_elements": sum(s.numel for s in sites),
        "fingerprint": fp,
        "data": data,
        "eval_tokens": data["eval"]["tokens"],
        "calibration_s": calib_s,
        "greedy": {},
        "settings": {
            "trials": args.trials,
            "objective": args.objective,
            "seed": args.seed,
            "delta": args.delta,
            "allocation": args.allocation,
            "spread": args.spread,
            "greedy_tokens": args.greedy_tokens,
            "greedy_step": args.greedy_step,
            "greedy_max": args.greedy_max,
            "greedy_max_step": args.greedy_max_step,
            "greedy_error_fraction": args.greedy_error_fraction,
            "greedy_lazy": args.greedy_lazy,
            "dense_prefix": args.dense_prefix,
            "refine": args.refine,
            "threads": args.threads,
            "command": " ".join(sys.argv),
        },
    }
    previous = results.kept_models.get(key, {})
    results.add_model(key, info)

    # greedy trajectories, one per score, shared by every sparsity (cached on disk)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    trajs = {}
    for score in sorted({GREEDY_SCORE[m] for m in args.methods if m in GREEDY_SCORE}):
        path = args.cache_dir / (
            f"greedy-{key}-{fp}-{score}-c{args.calib_windows}x{args.seq_len}"
            f"-t{args.greedy_tokens}-b{args.greedy_step}-m{args.greedy_max}"
            f"-s{args.greedy_max_step}-f{args.greedy_error_fraction}"
            f"-{'lazy' if args.greedy_lazy else 'full'}-pt{og if score == 'was' else dp}.json"
        )
        t = time.time()
        if path.is_file():
            trajs[score] = GreedyTrajectories.load(path)
            how = "loaded"
        else:
            trajs[score] = greedy_trajectories(
                model,
                cal,
                calib,
                score=score,
                base_step=args.greedy_step,
                max_block_sparsity=args.greedy_max,
                max_tokens=args.greedy_tokens,
                max_step=args.greedy_max_step,
                error_fraction=args.greedy_error_fraction,
                lazy=args.greedy_lazy,
                per_token=True,
                progress=progress,
            )
            trajs[score].save(path)
            how = "computed"
        dt = time.time() - t
        if how == "loaded" and "seconds" in previous.get("greedy", {}).get(score, {}):
            dt = previous["greedy"][score]["seconds"]  # the time it took when computed
        info["greedy"][score] = {
            "seconds": dt,
            how: True,
            "tokens": args.greedy_tokens,
            "base_step": args.greedy_step,
            "max_block_sparsity": args.greedy_max,
            "max_step": args.greedy_max_step,
            "error_fraction": args.greedy_error_fraction,
            "lazy": args.greedy_lazy,
            "per_token_error": True,
            "cache": str(path),
        }
        results.add_model(key, info)
        log(f"greedy trajectories ({score}) {how} in {dt:.0f} s")

    sensitivity = None
    if "was-tpe" in args.methods and args.allocation == "sensitivity":
        from was_compile.schedules.allocation import DEFAULT_LEVELS, block_sensitivity

        path = args.cache_dir / (
            f"sensitivity-{key}-{fp}{og}-e{args.search_windows}x{args.seq_len}"
            f"-l{'_'.join(str(x) for x in DEFAULT_LEVELS)}-{trajs['was'].meta.get('base_step')}"
            f"-{args.greedy_tokens}-{args.greedy_max}-{args.greedy_max_step}.json"
        )
        t = time.time()
        if path.is_file():
            sensitivity = {int(k): v for k, v in json.loads(path.read_text()).items()}
            how = "loaded"
        else:
            sensitivity = block_sensitivity(model, cal, trajs["was"], search, DEFAULT_LEVELS)
            path.write_text(json.dumps(sensitivity))
            how = "computed"
        info["sensitivity"] = {
            "seconds": time.time() - t,
            how: True,
            "levels": list(DEFAULT_LEVELS),
            "text": "search",
            "nats": [sensitivity[b] for b in sorted(sensitivity)],
            "cache": str(path),
        }
        results.add_model(key, info)
        log(f"block sensitivities {how} in {time.time() - t:.0f} s")

    storage = args.cache_dir / "quality_tpe.sqlite"
    for s in args.sparsities:
        for method in args.methods:
            opts = {}
            if method in GREEDY_SCORE:
                opts["trajectories"] = trajs[GREEDY_SCORE[method]]
            if method == "was-tpe":
                opts.update(
                    model=model,
                    eval_batches=search,
                    trials=args.trials,
                    storage=f"sqlite:///{storage}",
                    seed=args.seed,
                    objective=args.objective,
                    delta=args.delta,
                    progress=progress,
                    allocation=args.allocation,
                    study_name=(
                        f"quality-{key}-{fp}-{s:.4f}-{args.objective}-s{args.seed}"
                        f"-d{args.delta}-c{args.calib_windows}x{args.seq_len}"
                        f"-e{args.search_windows}-g{args.greedy_tokens}"
                        f"-{args.greedy_step}-{args.greedy_max}-{args.greedy_max_step}"
                        f"-{args.greedy_error_fraction}-{int(args.greedy_lazy)}-pt{og}"
                        + (f"-sens{args.spread}" if args.allocation == "sensitivity" else "")
                    ),
                )
                if args.allocation == "sensitivity":
                    opts.update(sensitivity=sensitivity, spread=args.spread)
            t = time.time()
            schedule = make_schedule(cal, s, method, **opts)
            search_s = time.time() - t
            t = time.time()
            schedule = refine_schedule(model, schedule, calib, iterations=1, mode=args.refine)
            refine_s = time.time() - t
            t = time.time()
            ppl, achieved, measured = evaluate(
                model, windows["eval"], schedule.thresholds, args.batch, sites
            )
            eval_s = time.time() - t
            if args.smoke:  # the one-pass counts are what measured_sparsity reports
                from was_compile import measured_sparsity

                ref = measured_sparsity(
                    model, schedule.thresholds, list(windows["eval"].split(args.batch))
                )
                assert all(abs(ref[k] - measured[k]) < 1e-12 for k in ref), "counts differ"
            row = {
                "model": key,
                "method": method,
                "sparsity": s,
                "nominal_sparsity": schedule.achieved_sparsity(),
                "achieved_sparsity": achieved,
                "ppl": ppl,
                "ppl_increase": ppl - dense_ppl,
                "ppl_ratio": ppl / dense_ppl,
                "search_s": search_s if method == "was-tpe" else 0.0,
                "refine_s": refine_s,
                "eval_s": eval_s,
            }
            if method in GREEDY_SCORE and method != "was-tpe":
                row["greedy_s_shared"] = info["greedy"][GREEDY_SCORE[method]]["seconds"]
            if method == "was-tpe":
                tpe = schedule.meta["tpe"]
                row.update(
                    trials=tpe["trials"],
                    best_trial=tpe["best_trial"],
                    search_objective=tpe["objective"],
                    search_best_loss=tpe["best_loss"],
                    block_sparsity=tpe["block_sparsity"],
                    greedy_s_shared=info["greedy"]["was"]["seconds"],
                )
            results.add_row(row)
            log(
                f"{method:>13} @ {s:.0%}: ppl {ppl:9.3f} (+{ppl - dense_ppl:.2f}), achieved "
                f"{achieved:.1%}, search {search_s:.0f} s, refine {refine_s:.0f} s, "
                f"eval {eval_s:.0f} s"
            )
    del model, cal, trajs
    gc.collect()


def run_parallel(args, names: list[str], results: Results, log, argv) -> None:
    """Each model in its own process (this script with ``--models NAME``), ``args.jobs`` at a
    time, each writing its own JSON under ``<cache dir>/parts/``; their rows and models are
    then added to ``results``."""
    import subprocess

    argv = list(sys.argv[1:] if argv is None else argv)
    base, skip = [], False
    for a in argv:  # drop the options this function sets per model
        if skip:
            if a.startswith("--"):
                skip = False
            else:
                continue
        if a in ("--models", "--model", "--out", "--jobs", "--merge"):
            skip = a != "--merge"
            continue
        base.append(a)
    parts = args.cache_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    procs, pending = [], list(names)
    while pending or procs:
        while pending and len(procs) < args.jobs:
            name = pending.pop(0)
            out = parts / f"{slug(name)}.json"
            cmd = [sys.executable, __file__, *base, "--models", name, "--out", str(out)]
            cmd += ["--jobs", "1", "--no-plot", "--cache-dir", str(args.cache_dir)]
            log(f"[{name}] {' '.join(cmd)}")
            logf = open(parts / f"{slug(name)}.log", "w")  # noqa: SIM115
            procs.append(
                (name, out, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), logf)
            )
        time.sleep(5)
        for item in list(procs):  # rows so far (each part is rewritten atomically)
            name, out, proc, logf = item
            done = proc.poll() is not None
            if out.is_file():
                doc = json.loads(out.read_text())
                for k, v in doc.get("models", {}).items():
                    results.models[k] = v
                for r in doc.get("rows", []):
                    results.rows = [x for x in results.rows if _key(x) != _key(r)] + [r]
                results.write()
            if done:
                procs.remove(item)
                logf.close()
                log(
                    f"[{name}] finished (rc {proc.returncode}); log {parts / (slug(name) + '.log')}"
                )


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    torch.set_num_threads(max(1, args.threads))
    # fp32 on a GPU as on the CPU: no TF32 in matmuls (the default) nor convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t_start = time.time()

    def log(msg: str) -> None:
        print(msg, flush=True)

    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="was_quality_smoke_")
        model_path, paths = make_smoke_model(Path(tmp.name))
        names = [model_path]
        texts = paths
    else:
        names = (args.models if args.models is not None else list(MODELS)) + args.model
        texts = {"calib": args.calib_text, "search": args.search_text, "eval": args.eval_text}
    if len(set(texts.values())) < 3:
        log("warning: calibration, search and evaluation texts are not all different")

    meta = {
        "benchmark": "perplexity of sparsity schedules, every token sparsified (eager masking)"
        if not args.dense_prefix
        else f"perplexity of sparsity schedules, each window's first {args.dense_prefix} "
        "position(s) dense (a prompt prefilled dense) in search and evaluation, every later "
        "token sparsified (eager masking)",
        "dense_prefix": args.dense_prefix,
        "device": device_description(args.device, args.threads),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "dtype": "float32 (GGUF models: 4-bit GGUF weights dequantised to float32)",
        "methods": args.methods,
        "sparsities": args.sparsities,
        "sparsity_definition": "byte-weighted mean over all sites' weights; nominal = the "
        "schedule's per-site targets, achieved = channels zeroed on the "
        "evaluation text (masked_inputs counts = measured_sparsity)",
        "refine": args.refine
        + (" (one exact block-by-block sweep)" if args.refine == "sequential" else " (1 pass)"),
        "texts": texts,
        "windows": {
            "calib": args.calib_windows,
            "search": args.search_windows,
            "eval": args.eval_windows,
            "seq_len": args.seq_len,
        },
        "tpe": {
            "trials": args.trials,
            "objective": args.objective,
            "seed": args.seed,
            "delta": args.delta,
            "allocation": args.allocation,
            "spread": args.spread if args.allocation == "sensitivity" else None,
            "monotone": args.allocation == "uniform",
            "storage": "SQLite under cache dir",
        },
        "greedy": {
            "tokens": args.greedy_tokens,
            "base_step": args.greedy_step,
            "max_block_sparsity": args.greedy_max,
            "max_step": args.greedy_max_step,
            "error_fraction": args.greedy_error_fraction,
            "lazy": args.greedy_lazy,
            "per_token_error": True,
        },
        "smoke": args.smoke,
        "jobs": args.jobs,
        "command": " ".join(sys.argv),
        "runs": [" ".join(sys.argv)],
        "note": "per-model protocol settings (trials, greedy) are under models[...]['settings']",
    }
    from was_compile import dense_prompt

    results = Results(args.out, meta, args.merge)
    try:
        if args.jobs > 1 and len(names) > 1:
            run_parallel(args, names, results, log, argv)
        else:
            for name in names:
                with dense_prompt(args.dense_prefix):
                    run_model(args, name, texts, results, log)
                gc.collect()
    finally:
        meta["elapsed_s"] = time.time() - t_start
        allm = results.all_models()
        rows = results.all_rows()
        meta["targets"] = {k: targets(k, rows) for k in allm}
        results.write()
        for k, info in allm.items():
            log("\n" + table(k, info, rows))
            log(
                "  targets: "
                + "; ".join(
                    f"{c['sparsity']:.0%} {c['status']}"
                    + (
                        f" (was-tpe +{c['was_tpe_increase']:.2f} vs teal +{c['teal_increase']:.2f})"
                        if "teal_increase" in c
                        else ""
                    )
                    for c in meta["targets"][k]
                )
            )
        if args.plot and rows:
            png = args.out.with_suffix(".png")
            plot(png, allm, rows)
            log(f"\nwrote {png}")
        log(f"wrote {args.out} ({len(rows)} rows, {meta['elapsed_s']:.0f} s)")
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
