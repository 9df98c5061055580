"""What making a schedule costs on one GPU: time and memory of each stage.

Three parts, each meant for one GPU command of under 8 minutes (``--part``):

* ``calib8b``: ``was_compile.calibrate`` on a Llama-3-8B-shaped model (bf16) over ``--n-seqs``
  x ``--seq-len`` tokens (128 x 2048 by default), ``--batch`` sequences a forward. Reports
  time, peak GPU memory (``max_memory_allocated`` and ``max_memory_reserved``), the model's own
  weight bytes and the histograms' bytes. The histograms are recorded ``--calib-chunk``
  sequences per ``calibrate`` call and their counts summed (what one call over all batches
  records: the smoke run checks they are equal), so the part can stop inside its time budget
  and say how far it got (an extrapolation, labelled so). Then, as a reference, the same
  forwards with no hooks (stage ``forward``): calibration minus forward per token is what the
  histograms cost.
* ``greedy8b``: the greedy allocation inside blocks (``greedy_trajectories``) on the same
  model at the ``was search`` defaults (512 tokens, lazy, base step 0.1, up to 90%), after a
  small calibration that only provides thresholds (its cost is reported, not the point). One
  block is timed first; if all blocks fit in the remaining budget they run in one call (the
  real thing), otherwise chunks of blocks run while time allows and the full time is
  extrapolated (labelled so). Also the bytes of one block's saved call (inputs + dense output,
  what the greedy keeps per block on the GPU).
* ``search1b``: the whole ``was-tpe`` search of ``was search`` for a Llama-3.2-1B-shaped model:
  site detection, calibration, greedy, TPE (``make_schedule(cal, budget, "was-tpe", ...)`` with
  the library's defaults but ``--trials``, 50 by default, and a fresh SQLite study in a
  temporary folder: whatever the method runs besides the trials counts here) and sequential
  refinement, each timed on its own, against the target of under 15 minutes on one GPU (the
  sum of those stages; building the model is listed apart).

Random weights (Hugging Face init) and random token ids (``torch.randint`` over the
vocabulary): the costs are real, the statistics, greedy errors, TPE losses and schedules are
meaningless. Times are seconds of wall clock with the device synchronised at both ends of a
stage; memory is in bytes, the peak since the start of the stage (the caching allocator is
emptied and the peak counters reset before each stage).

    python benchmarks/search_cost.py --part calib8b
    python benchmarks/search_cost.py --part greedy8b
    python benchmarks/search_cost.py --part search1b
    python benchmarks/search_cost.py --smoke            # CPU: a tiny Llama, every part

Rows are merged into ``benchmarks/results/search_cost.json`` (a row per part: a new run of a
part replaces that part's row) and written after every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import math
import platform
import resource
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this working tree's was_compile
sys.path.insert(0, str(ROOT / "benchmarks"))  # decode.py (first already when run as a script)
from decode import MODELS, SMOKE_MODELS, build_model  # noqa: E402

from was_compile import calibrate, find_sites, greedy_trajectories, make_schedule  # noqa: E402
from was_compile.schedules.calibration import Calibration  # noqa: E402
from was_compile.schedules.greedy import (  # noqa: E402
    block_module_names,
    capture_block_calls,
    greedy_input_ids,
)
from was_compile.schedules.refine import refine_schedule  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "search_cost.json"
PARTS = {  # part: (model, stages in order)
    "calib8b": ("Llama-3-8B", ("build", "sites", "calibration", "forward")),
    "greedy8b": ("Llama-3-8B", ("build", "sites", "calibration", "greedy")),
    "search1b": ("Llama-3.2-1B", ("build", "sites", "calibration", "greedy", "tpe", "refinement")),
}
SMOKE_MODEL = "tiny-llama"
SEARCH_STAGES = ("sites", "calibration", "greedy", "tpe", "refinement")  # the search's time
TARGET_S = 15 * 60  # issue target: a full was-tpe search of a 1B model in < 15 min, one GPU
EVAL_BATCH = 4  # windows per forward of the TPE objective and refinement (`was search`)
DATA_NOTE = (
    "random token ids (torch.randint over the vocabulary, seed 1 calibration, seed 2 held-out) "
    "and random weights (Hugging Face init, seed 0): costs are real, statistics and schedules "
    "meaningless"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes left unset take the part's default (smaller for --smoke)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part",
        nargs="+",
        choices=list(PARTS),
        help="parts to run (required on a GPU; --smoke: all by default)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        help="search1b: stages to run, prerequisites included (default: all of "
        f"{list(PARTS['search1b'][1][1:])})",
    )
    p.add_argument(
        "--n-seqs",
        type=int,
        help="calibration sequences (calib8b, search1b: 128; greedy8b: 8; smoke 4)",
    )
    p.add_argument("--seq-len", type=int, help="tokens a sequence (2048; smoke 32)")
    p.add_argument("--batch", type=int, help="calibration sequences a forward (8; smoke 2)")
    p.add_argument(
        "--calib-chunk", type=int, help="sequences a calibrate() call, counts summed (32; smoke 2)"
    )
    p.add_argument(
        "--greedy-tokens",
        type=int,
        help="greedy and refinement tokens, as `was search --greedy-tokens` (512; smoke 32)",
    )
    p.add_argument(
        "--exact-greedy",
        action="store_true",
        help="measure every component each step (default lazy, as `was search`)",
    )
    p.add_argument(
        "--greedy-chunk",
        type=int,
        default=4,
        help="greedy8b: blocks a call when the full greedy does not fit the budget",
    )
    p.add_argument("--trials", type=int, help="TPE trials (50, the default of was search; smoke 3)")
    p.add_argument(
        "--eval-tokens", type=int, help="held-out tokens of the TPE objective (2048; smoke 64)"
    )
    p.add_argument("--budget", type=float, default=0.5, help="sparsity budget of the search")
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="seconds from the start of the process after which calibration chunks, "
        "reference forwards and greedy blocks are not started (the rest is extrapolated)",
    )
    p.add_argument(
        "--out",
        help=f"JSON results (default {DEFAULT_OUT.relative_to(ROOT)}; smoke: a temporary file)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: a tiny 2-layer Llama on the CPU, every part, few tokens "
        "(checks the script; times meaningless)",
    )
    args = p.parse_args(argv)
    if args.part is None:
        if not args.smoke:
            p.error("--part is required on a GPU (each part fits one 8-minute command)")
        args.part = list(PARTS)
    stages = PARTS["search1b"][1][1:]  # build always runs
    if args.stages is None:
        args.stages = list(stages)
    unknown = set(args.stages) - set(stages)
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; choose from {list(stages)}")
    last = max(stages.index(s) for s in args.stages)
    args.stages = list(stages[: last + 1])  # a stage needs every stage before it
    if args.out is None:
        args.out = (
            str(Path(tempfile.mkdtemp(prefix="was_search_cost_")) / "search_cost.json")
            if args.smoke
            else str(DEFAULT_OUT)
        )
    sizes = [
        ("seq_len", 2048, 32),
        ("batch", 8, 2),
        ("calib_chunk", 32, 2),
        ("greedy_tokens", 512, 32),
        ("trials", 50, 3),
        ("eval_tokens", 2048, 64),
    ]
    for key, full, small in sizes:
        if getattr(args, key) is None:
            setattr(args, key, small if args.smoke else full)
    return args


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """Device name, its memory (bytes) and the library versions."""
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke test)",
        "gpu_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": transformers.__version__,
        "optuna": _version("optuna"),
        "python": platform.python_version(),
    }


def tensor_bytes(tree: object) -> int:
    """Bytes of every tensor in nested tuples, lists and dicts (other objects count 0)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, (tuple, list)):
        return sum(tensor_bytes(t) for t in tree)
    if isinstance(tree, dict):
        return sum(tensor_bytes(t) for t in tree.values())
    return 0


class Recorder:
    """Times stages and records their memory into one row; writes the JSON after each one.

    ``rows``: rows of earlier runs kept in the output file (other parts); the current row is
    replaced in place each time it is written.
    """

    def __init__(self, out: Path, meta: dict, kept: list[dict], device: torch.device):
        self.out, self.meta, self.kept, self.device = out, meta, kept, device
        self.rows: list[dict] = []
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": self.meta, "rows": self.kept + self.rows}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.out)

    def stage(self, row: dict, name: str, fn: Callable[[dict], Any]) -> Any:
        """Run ``fn(record)`` as stage ``name`` of ``row``: seconds (wall, device synced at
        both ends) and peak memory (bytes) since the stage began. ``fn`` may put its own
        ``seconds`` into the record (the measured quantity when the stage also ran probes);
        the stage's whole wall time is then ``wall_seconds``."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        rec: dict = {
            "stage": name,
            "allocated_before_bytes": torch.cuda.memory_allocated(self.device)
            if self.cuda
            else None,
        }
        t0 = time.perf_counter()
        try:
            result = fn(rec)
            self.sync()
        except BaseException as err:
            rec["error"] = f"{type(err).__name__}: {err}"[:2000]
            raise
        finally:
            wall = time.perf_counter() - t0
            rec["wall_seconds"] = wall
            rec.setdefault("seconds", wall)
            rec.setdefault("complete", "error" not in rec)
            rec["peak_allocated_bytes"] = (
                torch.cuda.max_memory_allocated(self.device) if self.cuda else None
            )
            rec["peak_reserved_bytes"] = (
                torch.cuda.max_memory_reserved(self.device) if self.cuda else None
            )
            # the process's peak resident memory so far (not per stage): the CPU's measure
            rec["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            row["stages"].append(rec)
            self.write()
            _print_stage(row["part"], rec)
        return result


def _gib(v: int | None) -> str:
    return f"{v / 2**30:10.2f}" if v is not None else f"{'-':>10}"


def _print_stage(part: str, rec: dict) -> None:
    note = "" if rec["complete"] else "  INCOMPLETE"
    if "extrapolated_seconds" in rec:
        note += f"  (all: {rec['extrapolated_seconds']:.1f} s, extrapolated)"
    if "error" in rec:
        note += f"  ERROR {rec['error'][:120]}"
    print(
        f"{part:<10}{rec['stage']:<12}{rec['seconds']:>9.2f}{_gib(rec['peak_allocated_bytes'])}"
        f"{_gib(rec['peak_reserved_bytes'])}{note}",
        flush=True,
    )


HEADER = f"{'part':<10}{'stage':<12}{'seconds':>9}{'peak GiB':>10}{'rsv GiB':>10}"


def random_ids(vocab: int, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """input_ids [n, seq_len] drawn uniformly from the vocabulary (CPU)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (n, seq_len), generator=gen)


def merge_counts(total: Calibration, part: Calibration) -> None:
    """Add ``part``'s histogram counts and tokens to ``total`` (same model and sites)."""
    for key, hist in part.histograms.items():
        total.histograms[key].counts += hist.counts.to(total.histograms[key].counts.device)
    total.data["tokens"] = int(total.data.get("tokens", 0)) + int(part.data.get("tokens", 0))


def calibration_stage(
    model: torch.nn.Module,
    sites: list,
    ids: torch.Tensor,
    args: argparse.Namespace,
    deadline: float,
    rec: dict,
    check_single: bool,
    sync: Callable[[], None],
) -> Calibration:
    """Calibrate on ``ids`` [n, T] in batches of ``args.batch``, ``args.calib_chunk`` sequences
    a ``calibrate`` call, counts summed; stops starting chunks past ``deadline`` (then the
    record says how far it got and extrapolates the full time linearly in sequences)."""
    batches = list(ids.split(args.batch))
    per_chunk = max(1, args.calib_chunk // args.batch)
    cal: Calibration | None = None
    chunk_s: list[float] = []
    done = n_batches = 0
    for i in range(0, len(batches), per_chunk):
        chunk = batches[i : i + per_chunk]
        if chunk_s and time.perf_counter() + 1.2 * max(chunk_s) > deadline:
            break
        t0 = time.perf_counter()
        part = calibrate(model, chunk, sites=sites, source="random tokens", progress=False)
        sync()
        chunk_s.append(time.perf_counter() - t0)
        done += sum(int(b.shape[0]) for b in chunk)
        n_batches += len(chunk)
        if cal is None:
            cal = part
        else:
            merge_counts(cal, part)
    assert cal is not None
    n = int(ids.shape[0])
    rec.update(
        n_seqs=n,
        seq_len=int(ids.shape[1]),
        batch=args.batch,
        tokens_per_forward=args.batch * int(ids.shape[1]),
        calibrate_calls=len(chunk_s),
        seqs_per_call=per_chunk * args.batch,
        call_seconds=chunk_s,
        seconds=sum(chunk_s),  # the calibrate() calls (the stage's wall time adds the merges)
        seqs_done=done,
        tokens_done=int(cal.data["tokens"]),
        complete=done == n,
        histogram_bytes=sum(
            h.counts.numel() * h.counts.element_size() for h in cal.histograms.values()
        ),
    )
    if done < n:
        rec["extrapolated_seconds"] = sum(chunk_s) / done * n
    if check_single:  # one call over the same batches records the same counts
        single = calibrate(model, batches[:n_batches], sites=sites, progress=False)
        rec["check_chunked_equals_single_call"] = all(
            torch.equal(h.counts, single.histograms[k].counts) for k, h in cal.histograms.items()
        )
    return cal


def forward_stage(
    model: torch.nn.Module,
    ids: torch.Tensor,
    args: argparse.Namespace,
    deadline: float,
    rec: dict,
    sync: Callable[[], None],
) -> None:
    """The reference for the calibration's time: the same forwards (``ids`` [n, T] in batches
    of ``args.batch``, KV cache off) with no hooks, so calibration minus this is what the
    histograms cost; stops starting batches past ``deadline`` (then extrapolated)."""
    batch_s: list[float] = []
    done = 0
    for batch in ids.split(args.batch):
        if batch_s and time.perf_counter() + 1.2 * max(batch_s) > deadline:
            break
        t0 = time.perf_counter()
        model(input_ids=batch, use_cache=False)
        sync()
        batch_s.append(time.perf_counter() - t0)
        done += int(batch.shape[0])
    n = int(ids.shape[0])
    rec.update(
        seconds=sum(batch_s),
        n_seqs=n,
        seqs_done=done,
        complete=done == n,
        tokens_done=done * int(ids.shape[1]),
        note="model(input_ids, use_cache=False) on the calibration batches, no hooks",
    )
    if done < n:
        rec["extrapolated_seconds"] = sum(batch_s) / done * n


def greedy_kwargs(args: argparse.Namespace) -> dict:
    """The `was search` greedy options (the library's other defaults)."""
    return {
        "score": "was",
        "max_tokens": args.greedy_tokens,
        "lazy": not args.exact_greedy,
        "progress": False,
    }


def greedy_settings(meta: dict) -> dict:
    """What the greedy ran with (its own metadata, less the calibration's), for the JSON."""
    return {k: v for k, v in meta.items() if k != "calibration"}


def greedy_batches(ids: torch.Tensor, args: argparse.Namespace) -> list[torch.Tensor]:
    """The windows `was search` gives the greedy and the refinement: ceil(greedy_tokens /
    seq_len) calibration windows (the greedy keeps the first ``greedy_tokens`` tokens)."""
    n = max(1, math.ceil(args.greedy_tokens / ids.shape[1]))
    return list(ids[:n].split(EVAL_BATCH))


def greedy_8b_stage(
    model: torch.nn.Module,
    cal: Calibration,
    batches: list[torch.Tensor],
    args: argparse.Namespace,
    deadline: float,
    rec: dict,
    sync: Callable[[], None],
) -> None:
    """Greedy over every block in one call if a one-block probe says it fits before
    ``deadline``; otherwise chunks of blocks while time allows, full time extrapolated."""
    blocks = sorted({s.block for s in cal.sites})
    names = block_module_names(cal.sites)
    ids = greedy_input_ids(batches, args.greedy_tokens)
    calls = capture_block_calls(model, {blocks[0]: names[blocks[0]]}, ids)[blocks[0]]
    per_block = sum(tensor_bytes((c.args, c.kwargs, c.output)) for c in calls)
    del calls
    rec.update(
        blocks=len(blocks),
        greedy_sequences=int(ids.shape[0]),
        greedy_seq_len=int(ids.shape[1]),
        saved_call_bytes_per_block=per_block,
        saved_call_bytes_all_blocks=per_block * len(blocks),
    )

    def run(bs: list[int]) -> tuple[float, dict]:
        sub = dataclasses.replace(cal, sites=[s for s in cal.sites if s.block in bs])
        t0 = time.perf_counter()
        traj = greedy_trajectories(model, sub, batches, **greedy_kwargs(args))
        sync()
        rec["settings"] = greedy_settings(traj.meta)
        return time.perf_counter() - t0, traj.blocks

    probe_s, probe = run(blocks[:1])
    rec["probe_block_seconds"] = probe_s
    steps = {b: len(t.sparsity) - 1 for b, t in probe.items()}
    if time.perf_counter() + 1.25 * probe_s * len(blocks) < deadline:
        seconds, trajs = run(blocks)
        rec.update(
            seconds=seconds,
            mode="all blocks in one call",
            blocks_done=len(blocks),
            steps=sum(len(t.sparsity) - 1 for t in trajs.values()),
        )
        return
    done_s, done = probe_s, list(blocks[:1])
    for i in range(1, len(blocks), args.greedy_chunk):
        chunk = blocks[i : i + args.greedy_chunk]
        if time.perf_counter() + 1.25 * done_s / len(done) * len(chunk) > deadline:
            break
        dt, trajs = run(chunk)
        done_s += dt
        done += chunk
        steps.update({b: len(t.sparsity) - 1 for b, t in trajs.items()})
    rec.update(
        seconds=done_s,
        mode=f"blocks in calls of {args.greedy_chunk} (time budget)",
        blocks_done=len(done),
        steps=sum(steps.values()),
        complete=len(done) == len(blocks),
        extrapolated_seconds=done_s / len(done) * len(blocks),
    )


def tpe_stage(
    model: torch.nn.Module,
    cal: Calibration,
    traj: object,
    eval_batches: list[torch.Tensor],
    args: argparse.Namespace,
    workdir: Path,
    rec: dict,
) -> object:
    """``make_schedule(cal, budget, "was-tpe", ...)`` with the library's defaults for every
    option but the trials, the (fresh SQLite) storage and the given greedy trajectories, so
    whatever the method runs besides the trials (a block-sensitivity centre, say) is timed
    with them; the schedule is returned."""
    schedule = make_schedule(
        cal,
        args.budget,
        "was-tpe",
        model=model,
        trajectories=traj,
        eval_batches=eval_batches,
        trials=args.trials,
        storage=f"sqlite:///{workdir / 'tpe.db'}",
        study_name=f"search-cost-{uuid.uuid4().hex[:8]}",
        progress=False,
    )
    tpe = dict(schedule.meta.get("tpe", {}))
    tpe.pop("storage", None)
    rec.update(
        trials_requested=args.trials,
        trials_done=tpe.get("trials"),
        complete=tpe.get("trials") == args.trials,
        eval_windows=sum(int(b.shape[0]) for b in eval_batches),
        eval_tokens_per_trial=sum(b.numel() for b in eval_batches),
        storage="SQLite file in a temporary folder",
        schedule_sparsity=schedule.achieved_sparsity(),
        tpe_meta_losses_meaningless=tpe,
    )
    return schedule


def run_part(
    part: str, args: argparse.Namespace, rec_: Recorder, env: dict, t_start: float
) -> dict:
    """Build the part's model and run its stages; returns the row (also in ``rec_.rows``)."""
    name, stages = PARTS[part]
    if part == "search1b":
        stages = ("build", *args.stages)
    if args.smoke:
        name = SMOKE_MODEL
    family, shape = {**MODELS, **SMOKE_MODELS}[name]
    device = rec_.device
    dtype = torch.float32 if args.smoke else torch.bfloat16
    deadline = t_start + args.budget_s
    n_seqs = args.n_seqs or (4 if args.smoke else (8 if part == "greedy8b" else 128))
    row: dict = {
        "part": part,
        "model": name,
        "family": family,
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "smoke": args.smoke,
        **env,
        "data": DATA_NOTE,
        "stages_planned": list(stages),
        "stages": [],
        "settings": {
            "n_seqs": n_seqs,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "calib_chunk": args.calib_chunk,
            "budget_s": args.budget_s,
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if part == "greedy8b":
        row["settings"]["note"] = "the calibration only provides thresholds for the greedy"
    if part == "search1b":
        row["settings"].update(
            trials=args.trials,
            eval_tokens=args.eval_tokens,
            sparsity_budget=args.budget,
            greedy={"tokens": args.greedy_tokens, "lazy": not args.exact_greedy},
            refine="sequential, 1 pass, on the greedy's windows",
        )
    rec_.rows.append(row)
    ids = random_ids(shape["vocab_size"], n_seqs, args.seq_len, seed=1).to(device)
    state: dict = {}

    def build(rec: dict) -> None:
        model = build_model(family, shape, None, device, dtype)
        state["model"] = model
        params = {id(p): p for p in model.parameters()}.values()  # tied weights once
        row["weight_bytes"] = sum(p.numel() * p.element_size() for p in params)
        row["parameters"] = sum(p.numel() for p in params)
        row["layers"] = model.config.num_hidden_layers
        rec["note"] = "random init on the device (not part of the search)"

    def sites(rec: dict) -> None:
        state["sites"] = find_sites(state["model"])
        row["n_sites"] = len(state["sites"])
        row["site_weight_bytes"] = sum(s.numel for s in state["sites"]) * dtype.itemsize
        rec["note"] = "find_sites (Dynamo export); calibrate() runs it when not given sites"

    def calib(rec: dict) -> None:
        state["cal"] = calibration_stage(
            state["model"], state["sites"], ids, args, deadline, rec, args.smoke, rec_.sync
        )
        if rec.get("tokens_per_forward") and rec["allocated_before_bytes"] is not None:
            extra = torch.cuda.max_memory_allocated(device) - rec["allocated_before_bytes"]
            rec["extra_peak_bytes_per_forward_token"] = extra / rec["tokens_per_forward"]

    def greedy(rec: dict) -> None:
        if part == "greedy8b":
            greedy_8b_stage(
                state["model"],
                state["cal"],
                greedy_batches(ids, args),
                args,
                deadline,
                rec,
                rec_.sync,
            )
            return
        traj = greedy_trajectories(
            state["model"], state["cal"], greedy_batches(ids, args), **greedy_kwargs(args)
        )
        state["traj"] = traj
        rec.update(
            blocks=len(traj.blocks),
            settings=greedy_settings(traj.meta),
            greedy_sequences=traj.meta["sequences"],
            greedy_seq_len=traj.meta["seq_len"],
            steps=sum(len(t.sparsity) - 1 for t in traj.blocks.values()),
        )

    def tpe(rec: dict) -> None:
        n_eval = max(1, math.ceil(args.eval_tokens / args.seq_len))
        held_out = random_ids(shape["vocab_size"], n_eval, args.seq_len, seed=2).to(device)
        with tempfile.TemporaryDirectory(prefix="was_search_cost_tpe_") as work:
            state["schedule"] = tpe_stage(
                state["model"],
                state["cal"],
                state["traj"],
                list(held_out.split(EVAL_BATCH)),
                args,
                Path(work),
                rec,
            )

    def refine(rec: dict) -> None:
        batches = greedy_batches(ids, args)
        refined = refine_schedule(state["model"], state["schedule"], batches, 1)
        rec.update(
            mode=refined.meta.get("refined"),
            windows=sum(int(b.shape[0]) for b in batches),
            tokens=sum(b.numel() for b in batches),
            schedule_sparsity=refined.achieved_sparsity(),
        )

    steps = {
        "build": build,
        "sites": sites,
        "calibration": calib,
        "forward": lambda rec: forward_stage(state["model"], ids, args, deadline, rec, rec_.sync),
        "greedy": greedy,
        "tpe": tpe,
        "refinement": refine,
    }
    try:
        with torch.no_grad():
            for stage in stages:
                rec_.stage(row, stage, steps[stage])
    except Exception:  # noqa: BLE001 - keep the stages measured so far; report the error
        traceback.print_exc()
        row["error"] = traceback.format_exc(limit=3)[-2000:]
    finally:
        state.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summarize(row)
    rec_.write()
    return row


def summarize(row: dict) -> None:
    """Row totals: the largest peak, whether it fit the GPU, the search time and its target."""
    recs = row["stages"]
    row["finished"] = "error" not in row and [r["stage"] for r in recs] == row["stages_planned"]
    row["complete"] = row["finished"] and all(r["complete"] for r in recs)
    peaks = [r["peak_reserved_bytes"] for r in recs if r["peak_reserved_bytes"] is not None]
    alloc = [r["peak_allocated_bytes"] for r in recs if r["peak_allocated_bytes"] is not None]
    row["max_peak_allocated_bytes"] = max(alloc) if alloc else None
    row["max_peak_reserved_bytes"] = max(peaks) if peaks else None
    total = row.get("gpu_total_bytes")
    row["fits_one_gpu"] = (
        bool(row["finished"] and peaks and max(peaks) <= total) if total is not None else None
    )
    by = {r["stage"]: r for r in recs}
    if "calibration" in by and "forward" in by:  # what the histograms add, per token
        per_token = {k: by[k]["seconds"] / by[k]["tokens_done"] for k in ("calibration", "forward")
                     if by[k].get("tokens_done")}  # fmt: skip
        row["calibration_seconds_per_token"] = per_token.get("calibration")
        row["forward_seconds_per_token"] = per_token.get("forward")
        if len(per_token) == 2:
            row["histogram_seconds_per_token"] = per_token["calibration"] - per_token["forward"]
    if row["part"] == "search1b":
        search = [r for r in recs if r["stage"] in SEARCH_STAGES]
        row["search_seconds"] = sum(r["seconds"] for r in search)
        row["search_seconds_extrapolated"] = sum(
            r.get("extrapolated_seconds", r["seconds"]) for r in search
        )
        row["target_seconds"] = TARGET_S
        all_stages = {r["stage"] for r in search} == set(SEARCH_STAGES)
        row["meets_target"] = (
            bool(row["search_seconds_extrapolated"] < TARGET_S) if all_stages else None
        )


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; returns 0, 1 if a part failed, 2 without a GPU."""
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(
            "benchmarks/search_cost.py: no CUDA device; run it on a GPU machine, or --smoke "
            "to check it on the CPU.",
            file=sys.stderr,
        )
        return 2
    t_start = time.perf_counter()
    if args.smoke:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(args.out)
    kept: list[dict] = []
    meta: dict = {}
    if out.exists():
        old = json.loads(out.read_text())
        kept = [r for r in old.get("rows", []) if r.get("part") not in args.part]
        meta = old.get("meta", {})
    runs = [r for r in meta.get("runs", []) if r.get("parts") != args.part][-20:]
    runs.append(
        {"parts": args.part, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]}
    )
    meta = {
        "what": "time and memory of each stage of making a schedule (benchmarks/search_cost.py)",
        "units": "seconds (wall clock, device synchronised), bytes",
        "data": DATA_NOTE,
        "target": "search1b: sites + calibration + greedy + tpe + refinement < 900 s, one GPU",
        "runs": runs,
    }
    env = environment(device)
    rec_ = Recorder(out, meta, kept, device)
    print(f"device {env['device']}; torch {env['torch']}, transformers {env['transformers']}")
    print(HEADER)
    failed = False
    for part in args.part:
        row = run_part(part, args, rec_, env, t_start)
        failed |= not row["finished"]
    print()
    for row in rec_.rows:
        line = (
            f"{row['part']}: {row['model']} ({row.get('weight_bytes', 0) / 1e9:.2f} GB "
            f"weights), largest peak {_gib(row['max_peak_allocated_bytes']).strip()} GiB "
            f"allocated, fits one GPU: {row['fits_one_gpu']}"
        )
        if row["part"] == "search1b":
            verdict = {True: "meets", False: "misses", None: "n/a"}[row["meets_target"]]
            line += (
                f"; search {row['search_seconds']:.1f} s (extrapolated "
                f"{row['search_seconds_extrapolated']:.1f} s) vs target {TARGET_S} s: "
                f"{verdict}"
            )
        print(line)
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
