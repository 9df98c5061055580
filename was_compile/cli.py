"""The ``was`` command: calibrate a model, search a schedule, show it, tune kernels.

    was calibrate smollm2 --text "austen:Pride and Prejudice" --tokens 4096 --out cal.pt
    was search smollm2 --calibration cal.pt --budget 0.5 --method was-tpe --trials 50 \\
        --eval-text "austen:Persuasion" --out sched/
    was show sched/ --plot sched.png
    was tune smollm2

MODEL is a local Hugging Face model folder, a ``.gguf`` file, or a short name known to
``was_compile.models`` (``smollm2``, ``gemma3-270m``). A text SOURCE is a ``.txt`` path,
``austen:<Title>`` or ``pydoc`` (see ``was_compile.data``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .errors import WasError
from .schedules.methods import METHODS, TPE_METHODS, UNIFORM_METHODS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def _load_model(args: argparse.Namespace, device: str | None = None):  # noqa: ANN202
    """(model, tokenizer, description) through ``was_compile.models.load_model``."""
    from .models import load_model

    device = device or _device(args.device)
    model, tokenizer, desc = load_model(args.model, _dtype(args.dtype, device), device)
    model.eval()
    return model, tokenizer, desc


def _windows(tokenizer, source: str, seq_len: int, tokens: int) -> tuple[torch.Tensor, str]:  # noqa: ANN001
    """input_ids [n, seq_len] with n = ceil(tokens / seq_len), and the text's description."""
    from .data import load_text, token_windows

    text, desc = load_text(source)
    n = max(1, math.ceil(tokens / seq_len))
    return token_windows(tokenizer, text, seq_len, n), desc


def _batches(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [ids[i : i + batch_size] for i in range(0, ids.shape[0], batch_size)]


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .schedules.calibration import calibrate

    model, tokenizer, model_desc = _load_model(args)
    ids, text_desc = _windows(tokenizer, args.text, args.seq_len, args.tokens)
    print(f"model: {model_desc}\ntext: {text_desc} ({ids.shape[0]} x {ids.shape[1]} tokens)")
    cal = calibrate(model, _batches(ids, args.batch_size), norm=args.norm, source=text_desc)
    cal.data.update(
        {
            "model": args.model,
            "text": args.text,
            "seq_len": args.seq_len,
            "windows": int(ids.shape[0]),
            "dtype": args.dtype,
        }
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cal.save(args.out)
    print(f"calibration of {len(cal.sites)} sites written to {args.out}")
    return 0


def _greedy(args: argparse.Namespace, cal, model, tokenizer, score: str):  # noqa: ANN001, ANN202
    """Greedy trajectories for ``score``, reused from ``OUT/greedy-<score>.json`` if they
    were made from the same calibration with the same options."""
    from .schedules.greedy import GreedyTrajectories, greedy_trajectories

    path = Path(args.out) / f"greedy-{score}.json"
    if path.exists():
        old = GreedyTrajectories.load(path)
        if (
            old.meta.get("base_step") == args.base_step
            and old.meta.get("lazy", False) == (not args.exact_greedy)
            and old.meta.get("calibration") == cal.data
            and old.meta.get("max_tokens") == args.greedy_tokens
        ):
            print(f"reusing greedy trajectories from {path}")
            return old
    source = args.text or cal.data.get("text")
    if not source:
        raise WasError("the calibration does not name its text: pass --text SOURCE")
    seq_len = int(cal.data.get("seq_len", args.seq_len))
    ids, _ = _windows(tokenizer, source, seq_len, args.greedy_tokens)
    traj = greedy_trajectories(
        model,
        cal,
        [ids],
        score=score,
        base_step=args.base_step,
        max_tokens=args.greedy_tokens,
        lazy=not args.exact_greedy,
    )
    traj.meta["max_tokens"] = args.greedy_tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    traj.save(path)
    return traj


def _eval_batches(args: argparse.Namespace, cal, tokenizer) -> list[torch.Tensor]:  # noqa: ANN001
    """Held-out input_ids: windows of --eval-text; when that is the calibration text, the
    windows after the calibration's."""
    seq_len = int(cal.data.get("seq_len", args.seq_len))
    if args.eval_text == cal.data.get("text"):
        skip = int(cal.data.get("windows", 0))
        print(
            f"warning: --eval-text is the calibration text; using the windows after the first "
            f"{skip} (held out only if was_compile.data.token_windows cuts them in order)",
            file=sys.stderr,
        )
        ids, _ = _windows(tokenizer, args.eval_text, seq_len, (skip * seq_len) + args.eval_tokens)
        ids = ids[skip:]
    else:
        ids, _ = _windows(tokenizer, args.eval_text, seq_len, args.eval_tokens)
    return _batches(ids, args.batch_size)


def cmd_search(args: argparse.Namespace) -> int:
    from .schedules.calibration import Calibration
    from .schedules.methods import GREEDY_METHODS, make_schedule

    cal = Calibration.load(args.calibration)
    options: dict = {}
    model = tokenizer = None
    if args.method not in UNIFORM_METHODS:
        if args.method in TPE_METHODS and not args.eval_text:
            raise WasError(f"--method {args.method} needs --eval-text SOURCE (held-out text)")
        model, tokenizer, model_desc = _load_model(args)
        print(f"model: {model_desc}")
        score = {**GREEDY_METHODS, **TPE_METHODS}[args.method]
        options["trajectories"] = _greedy(args, cal, model, tokenizer, score)
        options["model"] = model
        if args.method in TPE_METHODS:
            options.update(
                eval_batches=_eval_batches(args, cal, tokenizer),
                trials=args.trials,
                storage=args.storage or str(Path(args.out) / "tpe.db"),
                study_name=args.study_name,
                seed=args.seed,
                objective=args.objective,
                monotone=args.monotone and args.allocation == "uniform",
                delta=args.delta,
                allocation=args.allocation,
            )
    schedule = make_schedule(cal, args.budget, args.method, **options)
    if args.refine:
        # Upstream sparsity shifts downstream inputs: re-read each site's threshold with the
        # schedule applied, so measured sparsity matches the schedule's (schedules/refine.py).
        from .schedules.refine import refine_schedule

        if model is None:
            model, tokenizer, model_desc = _load_model(args)
            print(f"model: {model_desc}")
        source = args.text or cal.data.get("text")
        if not source:
            raise WasError("the calibration does not name its text: pass --text SOURCE")
        seq_len = int(cal.data.get("seq_len", args.seq_len))
        ids, _ = _windows(tokenizer, source, seq_len, args.greedy_tokens)
        schedule = refine_schedule(model, schedule, _batches(ids, args.batch_size), args.refine)
    schedule.save(args.out)
    print(schedule.table())
    print(f"schedule written to {args.out}")
    return 0


def plot_schedule(schedule, path: str | Path) -> None:  # noqa: ANN001
    """A PNG: heat map of sparsity per block (rows) and component (columns), and the
    byte-weighted sparsity of each block against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .schedules.schedule_file import byte_weighted_sparsity
    from .sites import KIND_ORDER

    sites = schedule.sites
    kinds = [k for k in KIND_ORDER if any(s.kind == k for s in sites)]
    blocks = sorted({s.block for s in sites})
    grid = torch.full((len(blocks), len(kinds)), float("nan"))
    for s in sites:
        grid[blocks.index(s.block), kinds.index(s.kind)] = 100 * schedule.sparsity[s.name]
    per_block = [
        100 * byte_weighted_sparsity([s for s in sites if s.block == b], schedule.sparsity)
        for b in blocks
    ]
    fig, (ax0, ax1) = plt.subplots(
        1, 2, figsize=(10, max(3.0, 0.25 * len(blocks) + 1.5)), width_ratios=(2, 1)
    )
    im = ax0.imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax0.set_xticks(range(len(kinds)), kinds)
    ax0.set_ylabel("block")
    ax0.set_title("sparsity per component (%)")
    fig.colorbar(im, ax=ax0)
    ax1.plot(per_block, blocks, marker="o")
    ax1.axvline(100 * schedule.achieved_sparsity(), color="gray", linestyle="--")
    ax1.invert_yaxis()
    ax1.set_xlabel("block byte sparsity (%)")
    ax1.set_title(f"{schedule.meta.get('method')} @ {schedule.meta.get('budget')}")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def cmd_show(args: argparse.Namespace) -> int:
    from .schedules.schedule_file import Schedule

    schedule = Schedule.load(args.dir)
    print(schedule.table())
    print(json.dumps(schedule.meta, indent=1, default=str))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "cannot plot: matplotlib is not installed (pip install matplotlib, or "
                "was_compile[real])",
                file=sys.stderr,
            )
            return 1
        plot_schedule(schedule, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def site_shapes(sites) -> tuple[list[tuple[int, int]], dict[tuple[int, int], list[int]]]:  # noqa: ANN001
    """Distinct (N, K) of the model's site groups and their segment ends: N = summed
    out_features of the group's sites (one launch over the concatenated weights, q|k|v or
    gate|up), K = their shared in_features; ends = cumulative out_features."""
    groups: dict[str, list] = {}
    for s in sites:
        groups.setdefault(s.group, []).append(s)
    segments: dict[tuple[int, int], list[int]] = {}
    for g in groups.values():
        ends, total = [], 0
        for s in g:
            total += s.out_features
            ends.append(total)
        segments.setdefault((total, g[0].in_features), ends)
    return sorted(segments), segments


def cmd_tune(args: argparse.Namespace) -> int:
    from .sites import find_sites

    model, _, desc = _load_model(args, device="cpu")
    shapes, segments = site_shapes(find_sites(model))
    print(f"model: {desc}\nshapes (N, K): {shapes}")
    try:
        from .kernels.tuning import tune_shapes

        rows = tune_shapes(shapes, _dtype(args.dtype, "cuda"), segments=segments)
    except (RuntimeError, ImportError) as e:
        print(f"cannot tune: {e}", file=sys.stderr)
        return 2
    print(
        f"{'N':>6} {'K':>6} {'M':>3} {'sparsity':>8} {'us':>8} {'cublas':>8} {'masked':>8}  config"
    )
    for r in rows or []:
        print(
            f"{r['N']:>6} {r['K']:>6} {r['M']:>3} {r['sparsity']:>8.2f} {r['time_us']:>8.1f} "
            f"{r['cublas_us']:>8.1f} {r['prefill_us']:>8.1f}  {r['config']}"
        )
    from .kernels.gemv_tuner import cache_path
    from .kernels.switch_points import switch_rows, table_path

    print(f"kernel configs chosen and saved in {cache_path()}")
    print(f"decode kernel up to M rows, else masked dense (saved in {table_path()}):")
    for (k, ends, bucket), limit in sorted(switch_rows(rows or []).items()):
        print(f"  K={k} segment_ends={list(ends)} sparsity bucket {bucket}: M <= {limit}")
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="HF model folder, .gguf file, or smollm2 / gemma3-270m")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="was",
        description="Weight-aware activation sparsity: calibrate, search, show, tune.",
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("calibrate", help="record per-site score histograms")
    _model_args(p)
    p.add_argument("--text", required=True, help="SOURCE: file.txt, austen:<Title> or pydoc")
    p.add_argument("--tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward (default 4)")
    p.add_argument("--norm", default="l1", choices=["l1", "l2"], help="column norm of scores")
    p.add_argument("--out", required=True, help="calibration file to write (.pt)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("search", help="make a schedule for a budget")
    _model_args(p)
    p.add_argument("--calibration", required=True, help="file written by `was calibrate`")
    p.add_argument("--budget", type=float, default=0.5, help="byte-weighted sparsity (0.5)")
    p.add_argument("--method", default="was-tpe", choices=sorted(METHODS))
    p.add_argument("--out", required=True, help="schedule folder to write")
    p.add_argument("--text", help="greedy text SOURCE (default: the calibration's)")
    p.add_argument("--greedy-tokens", type=int, default=512, help="tokens for greedy (512)")
    p.add_argument("--base-step", type=float, default=0.1, help="greedy step (0.1)")
    p.add_argument(
        "--exact-greedy",
        action="store_true",
        help="measure every component at every greedy step (default: lazy greedy, "
        "about n_components times fewer block forwards)",
    )
    p.add_argument("--eval-text", help="held-out text SOURCE for the TPE objective")
    p.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens (2048)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=512,
        help="window length if the calibration does not record one",
    )
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward (default 4)")
    p.add_argument("--trials", type=int, default=50, help="TPE trials in the study (50)")
    p.add_argument(
        "--refine",
        type=int,
        default=1,
        help="re-read thresholds with the schedule applied (any value > 0: one sequential "
        "sweep, the default; 0 turns it off)",
    )
    p.add_argument("--storage", help="SQLite file or RDB URL (default: OUT/tpe.db)")
    p.add_argument("--study-name", help="optuna study name (default: from model and budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="ppl", choices=["ppl", "kl"])
    p.add_argument(
        "--delta",
        type=float,
        default=None,
        help="TPE per-block offsets +-delta (default: 0 with --allocation sensitivity, alpha "
        "alone is searched; 0.05 with --allocation uniform, the band around the budget)",
    )
    p.add_argument(
        "--allocation",
        default="sensitivity",
        choices=["sensitivity", "uniform"],
        help="TPE along measured block sensitivities (never monotone), or the band around "
        "the budget",
    )
    p.add_argument(
        "--no-monotone",
        dest="monotone",
        action="store_false",
        help="(--allocation uniform) let block sparsity decrease with depth",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", help="print a schedule (and plot it)")
    p.add_argument("dir", help="schedule folder")
    p.add_argument("--plot", help="write a PNG of sparsity per block and component")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("tune", help="autotune the sparse kernels for a model's shapes (CUDA)")
    _model_args(p)
    p.set_defaults(func=cmd_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``was`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (WasError, OSError, ValueError) as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
