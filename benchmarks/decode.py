"""End-to-end decode benchmark: dense ``torch.compile`` against ``backend="was"``.

Llama-3-8B-, Mistral-7B-, Qwen2.5-7B- and Llama-3.2-1B-shaped models (real shapes, random bf16
weights; thresholds from a calibration of this model on random tokens, so the sparsity is
real) run a static-KV-cache greedy decode loop, its one-token step compiled two ways in one
process: dense with ``mode="reduce-overhead", fullgraph=True``, and ``backend="was"``
(``make_schedule(cal, s, "was-uniform")``) with the same mode given as ``options={...,
"mode": "reduce-overhead"}`` (``torch.compile`` refuses ``mode=`` with ``options=``).
The prompt is prefilled by the eager model (dense, untimed); the timed
part is ``--new-tokens`` steps of ``--batch`` rows, CUDA events, median of ``--repeats`` runs.
Dense runs first, before ``prepare`` re-lays the weights out in place for the sparse variants.

Row fields: ms_per_token (one step), tok_per_s (batch / step), speedup over dense;
measured_sparsity, the byte-weighted fraction of the sites' input channels zeroed on random
tokens through the eager model with the thresholds applied, and measured_union_sparsity, the
same for the union of the batch's rows at one position (what a B-row step must read);
byte_limit = (site + lm_head bytes) / (union-kept site bytes + lm_head bytes), lm_head never
sparsified, embeddings not read; ideal = dense_ms / (dense_ms - dense_linear_ms +
sparse_weight_bytes / copy_bandwidth), where dense_linear_ms times cuBLAS ``F.linear`` on
every site and lm_head (B-row input, one CUDA graph) and copy_bandwidth a 1 GiB device copy
(read + write), both in this run; fraction_of_ideal = speedup / ideal; compile_s (the first
compiled call); peak_gib (``max_memory_allocated``, reset before each variant, ``prepare``
included) and peak_vs_dense; diagnostics: rewritten_sites, fused_activations (blocks whose
act(gate) * up the gate|up kernel writes), recompiles_while_timing, cudagraph_skips and
agree_with_dense (share of generated tokens equal to dense's).

    python benchmarks/decode.py                                   # all models, batch 1
    python benchmarks/decode.py --models Llama-3-8B --batch 1 4   # one model, two batches
    python benchmarks/decode.py --models Qwen2.5-7B --merge       # add to the same JSON
    python benchmarks/decode.py --smoke                           # CPU: checks the script

Cost (H100, measured): building and calibrating the 8B model ~25 s, compiling its dense step
10-40 s and each sparse variant 15-45 s; Llama-3-8B at six sparsities took 237 s, Llama-3.2-1B
at three 79 s. Under a 10-minute limit per command run one model per process with ``--merge``.
Results: ``benchmarks/results/decode.json``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F
import transformers
from torch._dynamo.utils import counters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmark this working tree's was_compile
from was_compile import calibrate, make_schedule, masked_inputs  # noqa: E402
from was_compile.backend import last_compile_stats, prepare  # noqa: E402
from was_compile.hf_cache import cache_arg_name  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: timing.py
from timing import copy_bandwidth_Bps, graph_ms  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "decode.json")
# name: (transformers family, config kwargs with the real shapes). Rope settings stay at their
# defaults: they do not change what a decode step costs.
_GQA8 = dict(num_attention_heads=32, num_key_value_heads=8)
MODELS = {
    "Llama-3-8B": ("Llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                 vocab_size=128256, tie_word_embeddings=False, **_GQA8)),
    "Mistral-7B": ("Mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   vocab_size=32768, sliding_window=None,  # v0.3
                                   tie_word_embeddings=False, **_GQA8)),
    "Qwen2.5-7B": ("Qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4,
                                 vocab_size=152064, tie_word_embeddings=False)),
    "Llama-3.2-1B": ("Llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                                   **_GQA8)),
}  # fmt: skip
SMOKE_MODELS = {
    "tiny-llama": ("Llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                 tie_word_embeddings=False)),
}  # fmt: skip
SPARSITIES = (0.0, 0.25, 0.40, 0.50, 0.60, 0.70)
MAX_DECODE_ROWS = 16  # the backend's default: above it a step runs the dense prefill path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time static-cache greedy decoding, dense "
                                "torch.compile vs backend='was' (needs a CUDA GPU).")  # fmt: skip
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="subset of models")
    p.add_argument("--sparsities", nargs="+", type=float,
                   help=f"'was' variants' sparsities (default {list(SPARSITIES)})")  # fmt: skip
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="decode batch sizes")
    p.add_argument("--new-tokens", type=int, help="timed decode steps (256; smoke 4)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens, prefilled (128; smoke 24)")
    p.add_argument("--layers", type=int, help="override the number of layers (quick runs)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
    p.add_argument("--warmup", type=int, default=3, help="compiled steps before timing")
    p.add_argument("--calib-batches", type=int, help="random calibration batches (4; smoke 2)")
    p.add_argument("--calib-len", type=int, help="tokens a calibration batch (128; smoke 32)")
    p.add_argument("--out", help="JSON results file (default benchmarks/results/decode.json)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows already in --out that this run does not measure again",
    )
    p.add_argument(
        "--no-fuse-activation",
        action="store_true",
        help="compile with options fuse_activation=False: each block's act(gate) "
        "* up stays its own kernel (A/B of passes/fuse_output_activation.py)",
    )
    p.add_argument("--smoke", action="store_true",
                   help="no GPU: a tiny 2-layer Llama on the CPU, eager compilers; checks the "
                   "script (timings meaningless; a temp --out unless given)")  # fmt: skip
    args = p.parse_args(argv)
    smoke = args.smoke
    if args.out is None:
        tmp = smoke and tempfile.mkdtemp(prefix="was_decode_smoke_")
        args.out = os.path.join(tmp, "decode.json") if smoke else DEFAULT_OUT
    for key, full, small in [("new_tokens", 256, 4), ("prompt_len", 128, 24),
                             ("calib_batches", 4, 2), ("calib_len", 128, 32)]:  # fmt: skip
        if getattr(args, key) is None:
            setattr(args, key, small if smoke else full)
    if smoke:
        args.repeats = min(args.repeats, 2)
    args.sparsities = sorted(set(args.sparsities if args.sparsities is not None else SPARSITIES))
    return args


class Clock:
    """Median timings on one device: CUDA events on a GPU, wall clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self):
        """A CUDA event recorded now (the wall clock on the CPU)."""
        if not self.cuda:
            return time.perf_counter()
        (ev := torch.cuda.Event(enable_timing=True)).record()
        return ev

    def stop_ms(self, start) -> float:
        if not self.cuda:
            return (time.perf_counter() - start) * 1e3
        (end := torch.cuda.Event(enable_timing=True)).record()
        end.synchronize()
        return start.elapsed_time(end)

    def median_ms(self, fn, iters: int = 10, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            t = self.start()
            fn()
            times.append(self.stop_ms(t))
        return statistics.median(times)

    def graph_ms(self, fn, iters: int = 20) -> float:
        """Median time of ``fn`` captured in one CUDA graph (eager calls on the CPU)."""
        if not self.cuda:
            return self.median_ms(fn, iters=2, warmup=1)
        return graph_ms(fn, lambda replay: self.median_ms(replay, iters=iters, warmup=3))


def build_model(family: str, shape: dict, layers, device, dtype):
    """A random-initialised ``{family}ForCausalLM`` made directly on ``device`` in ``dtype``
    (Hugging Face's own normal_ init runs there: seconds on a GPU for 8B parameters)."""
    kwargs = {**shape, **({"num_hidden_layers": layers} if layers else {})}
    config = getattr(transformers, f"{family}Config")(**kwargs)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = getattr(transformers, f"{family}ForCausalLM")(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval().requires_grad_(False)


#: the KV-cache keyword of the installed transformers (``cache`` from 5.24 on, before it
#: ``past_key_values``), a constant for Dynamo; every family here takes the same one
CACHE_ARG = cache_arg_name(transformers.LlamaForCausalLM)


def decode_step(model, ids, cache):
    """One decode step (the function compiled): greedy next token [B, 1]. ``model`` is an
    argument so Dynamo names the weights by their module paths, as the schedule does."""
    logits = model(input_ids=ids, use_cache=True, **{CACHE_ARG: cache}).logits
    return logits[:, -1, :].argmax(dim=-1, keepdim=True)


def compile_step(model, sched, smoke: bool, fuse_activation: bool = True):
    """``decode_step`` compiled dense (``sched`` None: ``mode="reduce-overhead"``) or with
    ``backend="was"`` and ``sched`` (the same CUDA-graph mode, through ``options``); with
    ``smoke``, eager backends on the CPU. The was variant lays ``model``'s weights out in place
    first (``prepare``; a no-op once done), so compile dense before any sparse variant.
    ``fuse_activation``: the backend option (False: act(gate) * up stays its own kernel)."""
    if sched is None:
        opts = {"backend": "eager"} if smoke else {"mode": "reduce-overhead"}
    else:
        prepare(model, sched)
        was = {"schedule": sched, "max_decode_rows": MAX_DECODE_ROWS,
               "fuse_activation": fuse_activation}  # fmt: skip
        was.update({"compiler": "eager"} if smoke else {"mode": "reduce-overhead"})
        opts = {"backend": "was", "options": was}
    return torch.compile(decode_step, fullgraph=True, **opts)


def decode_sparsity(model, schedule, batches) -> tuple[float, float]:
    """Byte-weighted sparsity of the sites on ``batches`` [B, T] with the thresholds applied:
    (per token, union over the B rows at each position)."""
    counts: dict[str, list[int]] = {}
    device = next(model.parameters()).device

    def hook_for(name: str, tau: torch.Tensor):
        def hook(module, args):  # noqa: ANN001 - runs before the mask: sees the raw input
            keep = args[0].detach().abs().float() > tau  # [B, T, K]
            union = keep.any(dim=0)
            c = counts.setdefault(name, [0, 0, 0, 0])
            for i, v in enumerate((keep.sum(), keep.numel(), union.sum(), union.numel())):
                c[i] += int(v)

        return hook

    handles = [model.get_submodule(s.name).register_forward_pre_hook(
        hook_for(s.name, schedule.thresholds[s.name].to(device))) for s in schedule.sites
    ]  # fmt: skip
    try:
        with torch.no_grad(), masked_inputs(model, schedule.thresholds):
            for ids in batches:
                model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    total = sum(s.numel for s in schedule.sites)
    per_token = sum(s.numel * (1 - counts[s.name][0] / counts[s.name][1]) for s in schedule.sites)
    union = sum(s.numel * (1 - counts[s.name][2] / counts[s.name][3]) for s in schedule.sites)
    return per_token / total, union / total


def time_linears(model, sites, batch: int, clock: Clock) -> float:
    """ms for cuBLAS ``F.linear`` on every site's weight and lm_head, one [batch, K] input
    per K, all in one CUDA graph: the dense step's linear time, measured alone."""
    mods = [model.get_submodule(s.name) for s in sites] + [model.get_output_embeddings()]
    w0 = mods[0].weight
    xs = {}
    for m in mods:
        k = m.weight.shape[1]
        xs.setdefault(k, torch.randn(batch, k, device=w0.device, dtype=w0.dtype))

    def run():
        for m in mods:
            F.linear(xs[m.weight.shape[1]], m.weight, m.bias)

    return clock.graph_ms(run)


def copy_bandwidth(device, clock: Clock, smoke: bool) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    return copy_bandwidth_Bps(
        device, lambda fn: clock.median_ms(fn, iters=10), 2**20 if smoke else 2**29
    )


def run_variant(model, step, prompt, args, clock: Clock) -> dict:
    """Warm up (the first call compiles), then time ``args.new_tokens`` steps ``args.repeats``
    times from a fresh prefill; returns ms per step (median), compile time, tokens. Called
    under ``torch.no_grad()`` (the was backend is inference-only)."""
    length = prompt.shape[1] + max(args.new_tokens, args.warmup)
    cache = transformers.StaticCache(config=model.config, max_cache_len=length)

    def generate(n: int, first_call: list | None = None):
        cache.reset()
        logits = model(input_ids=prompt, use_cache=True, logits_to_keep=1,
                       **{CACHE_ARG: cache}).logits  # fmt: skip
        tok = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        clock.sync()
        tokens, t_wall, start = [], time.perf_counter(), clock.start()
        for i in range(n):
            torch.compiler.cudagraph_mark_step_begin()
            tok = step(model, tok, cache).clone()  # outputs of a CUDA graph are reused
            tokens.append(tok)
            if first_call is not None and i == 0:
                clock.sync()
                first_call.append(time.perf_counter() - t_wall)
        return clock.stop_ms(start) / n, torch.cat(tokens, dim=1)

    first: list[float] = []
    generate(max(args.warmup, 1), first)
    graphs = counters["stats"]["unique_graphs"]
    times, tokens = [], None
    for _ in range(args.repeats):
        ms, tokens = generate(args.new_tokens)
        times.append(ms)
    return {
        "ms_per_token": statistics.median(times),
        "compile_s": first[0],
        "tokens": tokens.cpu(),
        "recompiles_while_timing": counters["stats"]["unique_graphs"] - graphs,
    }


def _fresh(clock: Clock) -> None:
    """Drop compiled code and CUDA graphs of the previous variant; reset the peak counter."""
    torch._dynamo.reset()
    gc.collect()
    if clock.cuda:
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


HEADER = (
    f"{'model':<13}{'B':>3} {'variant':<8}{'sp':>5}{'meas':>6}{'ms/tok':>8}{'tok/s':>8}"
    f"{'speedup':>8}{'limit':>7}{'ideal':>7}{'%ideal':>7}{'comp s':>7}{'GiB':>7}"
)


def _print_row(r: dict) -> None:
    gib = f"{r['peak_gib']:7.2f}" if r["peak_gib"] is not None else f"{'-':>7}"
    print(f"{r['model']:<13}{r['batch']:>3} {r['variant']:<8}{r['sparsity']:>5.2f}"
          f"{r['measured_union_sparsity']:>6.2f}{r['ms_per_token']:>8.3f}{r['tok_per_s']:>8.1f}"
          f"{r['speedup']:>8.2f}{r['byte_limit']:>7.2f}{r['ideal']:>7.2f}"
          f"{r['fraction_of_ideal']:>7.0%}{r['compile_s']:>7.1f}{gib}", flush=True)  # fmt: skip


def bench_model(name: str, args, clock: Clock, device, dtype, bw: float, emit, errors) -> None:
    """Every variant of one model: dense for each batch, then each sparsity for each batch."""
    family, shape = {**MODELS, **SMOKE_MODELS}[name]
    t0 = time.time()
    model = build_model(family, shape, args.layers, device, dtype)
    vocab, layers = model.config.vocab_size, model.config.num_hidden_layers
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randint(vocab, (1, args.calib_len), generator=gen).to(device)
             for _ in range(args.calib_batches)]  # fmt: skip
    cal = calibrate(model, calib, source="random tokens", progress=False)
    sites = cal.sites
    elem = model.dtype.itemsize
    site_bytes = sum(s.numel for s in sites) * elem
    head_bytes = model.get_output_embeddings().weight.numel() * elem
    schedules = {s: make_schedule(cal, s, "was-uniform") for s in args.sparsities}
    print(
        f"{name}: {layers} layers, {len(sites)} sites, {site_bytes / 1e9:.2f} GB sites + "
        f"{head_bytes / 1e9:.2f} GB lm_head, built and calibrated in {time.time() - t0:.0f} s"
    )
    print(HEADER)

    prompts, sparsity, dense = {}, {}, {}
    for b in args.batch:
        prompts[b] = torch.randint(vocab, (b, args.prompt_len), generator=gen).to(device)
        measure = [torch.randint(vocab, (b, args.calib_len), generator=gen)
                   for _ in range(max(1, 8 // b))]  # fmt: skip
        for s, sched in schedules.items():
            sparsity[(b, s)] = decode_sparsity(model, sched, measure)

    def row(b: int, variant: str, s: float, res: dict, sched) -> None:
        d = dense[b]
        per_token, union = sparsity[(b, s)] if sched is not None else (0.0, 0.0)
        sparse_bytes = (1 - union) * site_bytes + head_bytes
        limit = (site_bytes + head_bytes) / sparse_bytes
        ideal = d["ms_per_token"] / (d["ms_per_token"] - d["linear_ms"] + sparse_bytes / bw * 1e3)
        speedup = d["ms_per_token"] / res["ms_per_token"]
        peak = res["peak_gib"]
        agree = (res["tokens"] == d["tokens"]).float().mean().item()
        r = {
            "model": name, "layers": layers, "batch": b, "variant": variant, "sparsity": s,
            "schedule_sparsity": sched.achieved_sparsity() if sched is not None else 0.0,
            "measured_sparsity": per_token, "measured_union_sparsity": union,
            "ms_per_token": res["ms_per_token"], "tok_per_s": b * 1e3 / res["ms_per_token"],
            "speedup": speedup, "byte_limit": limit, "ideal": ideal,
            "fraction_of_ideal": speedup / ideal, "compile_s": res["compile_s"],
            "peak_gib": peak,
            "peak_vs_dense": peak / d["peak_gib"] if peak is not None else None,
            "dense_ms_per_token": d["ms_per_token"], "dense_linear_ms": d["linear_ms"],
            "site_bytes": site_bytes, "lm_head_bytes": head_bytes,
            "sparse_weight_bytes": sparse_bytes, "copy_bandwidth_Bps": bw,
            "rewritten_sites": res.get("rewritten"), "fused_activations": res.get("activations"),
            "recompiles_while_timing": res["recompiles_while_timing"],
            "cudagraph_skips": res["cudagraph_skips"], "agree_with_dense": agree,
        }  # fmt: skip
        emit(r)

    def variant(b: int, s: float, sched) -> None:
        """Compile and time one variant (sched None: dense); an error is recorded, not raised."""
        _fresh(clock)
        skips = counters["inductor"]["cudagraph_skips"]
        try:
            if sched is None:
                linear_ms = time_linears(model, sites, b, clock)
                _fresh(clock)
            # dense ran before: see compile_step
            step = compile_step(model, sched, args.smoke, not args.no_fuse_activation)
            res = run_variant(model, step, prompts[b], args, clock)
        except Exception as err:  # noqa: BLE001 - keep the other variants' results
            traceback.print_exc()
            errors.append({"model": name, "batch": b, "sparsity": s, "dense": sched is None,
                           "error": f"{type(err).__name__}: {err}"[:2000]})  # fmt: skip
            return
        res.update(peak_gib=torch.cuda.max_memory_allocated() / 2**30 if clock.cuda else None,
                   cudagraph_skips=counters["inductor"]["cudagraph_skips"] - skips)  # fmt: skip
        if sched is None:
            dense[b] = {**res, "linear_ms": linear_ms}
        else:
            stats = last_compile_stats()
            res["rewritten"], res["activations"] = stats["rewritten"], stats["activations"]
        row(b, "dense" if sched is None else "was", s, res, sched)

    for b in args.batch:  # dense first: prepare() changes the weights' layout
        variant(b, 0.0, None)
    for s, sched in schedules.items():
        for b in [b for b in args.batch if b in dense]:  # speedups need the dense time
            variant(b, s, sched)


def _version(package: str):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _key(r: dict) -> tuple:
    return (r["model"], r["layers"], r["batch"], r["variant"], r["sparsity"])


def _splitk_reduction() -> str:
    """How the sparse kernel sums its split-K parts in this run (WAS_SPLITK_REDUCTION)."""
    try:
        from was_compile.kernels.splitk import reduction_mode
    except ImportError:  # no Triton: the reference path runs, nothing is split
        return "none (no triton)"
    return reduction_mode()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/decode.py: no CUDA device (torch.cuda.is_available() is False); "
              "run it on a GPU machine (H100), or --smoke to check it on the CPU.",
              file=sys.stderr)  # fmt: skip
        return 2
    if max(args.batch) > MAX_DECODE_ROWS:
        print(f"note: batch > {MAX_DECODE_ROWS} rows runs the dense path of the was op")
    if args.smoke:  # a tiny model: one thread is fastest (threads only add sync overhead)
        torch.set_num_threads(1)
        device, dtype = torch.device("cpu"), torch.float32
        models = list(SMOKE_MODELS)
    else:
        device, dtype = torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
        models = args.models or list(MODELS)
    clock = Clock(device)
    bw = copy_bandwidth(device, clock, args.smoke)
    device_name = torch.cuda.get_device_name(device) if clock.cuda else "cpu (smoke test)"
    print(f"device {device_name}; copy bandwidth {bw / 1e9:.1f} GB/s (read + write)")
    how = (
        ("backend='eager'", "{schedule, compiler: 'eager'}", "CPU wall clock: meaningless")
        if args.smoke
        else ("mode='reduce-overhead'", "{schedule, 'triton.cudagraphs': True}",
              "per decode step: CUDA events over new_tokens steps, median of repeats")
    )  # fmt: skip
    meta = {
        "device": device_name, "torch": torch.__version__, "triton": _version("triton"),
        "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "dtype": str(dtype).removeprefix("torch."),
        "smoke": args.smoke, "copy_bandwidth_Bps": bw,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "dense": f"torch.compile(decode_step, {how[0]}, fullgraph=True)",
        "was": f"torch.compile(decode_step, backend='was', fullgraph=True, options={how[1]})",
        "schedule": "make_schedule(calibrate(model, random tokens), s, 'was-uniform')",
        "timing": how[2],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "errors": [],
        "splitk_reduction": _splitk_reduction(),
    }  # fmt: skip
    rows: list[dict] = []
    kept: list[dict] = []
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        kept = old.get("rows", [])
        previous = old.get("meta", {})
        meta["previous_runs"] = previous.pop("previous_runs", []) + [previous]

    def write() -> None:
        fresh = {_key(r) for r in rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": [r for r in kept if _key(r) not in fresh] + rows},
                      f, indent=1)  # fmt: skip

    def emit(r: dict) -> None:
        rows.append(r)
        _print_row(r)
        write()  # after each row: partial results survive a time limit

    t_start = time.time()
    with torch.no_grad():
        for name in models:
            bench_model(name, args, clock, device, dtype, bw, emit, meta["errors"])
            _fresh(clock)  # the model is gone: free its memory before the next one
    meta["elapsed_s"] = time.time() - t_start
    write()
    print(f"wrote {args.out} ({len(rows)} rows, {meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
