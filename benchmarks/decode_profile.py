"""Where a decode step's GPU time goes: a kernel-level profile of the dense and the was step.

Builds one of ``decode.py``'s models (same shapes, random bf16 weights, thresholds from a
calibration on random tokens), compiles its one-token step as ``decode.py`` does (dense
``mode="reduce-overhead"``; ``backend="was"`` with a ``was-uniform`` schedule at
``--sparsity``), and records ``--steps`` decode steps of each with ``torch.profiler`` (CUPTI
sees the kernels inside the CUDA graphs). From the Chrome trace it reports, per step and in
microseconds: the span from the first kernel's start to the last kernel's end, the time some
kernel ran (busy) and the rest (gaps: launch latency between dependent kernels), the kernel
count, and per kernel family (our GEMV and its split-K reduction, cuBLAS, Inductor's fused
kernels, attention, copies) the count and time. Writes ``benchmarks/results/decode_profile.json``
and prints a table.

    python benchmarks/decode_profile.py --model Llama-3-8B --sparsity 0.5
    python benchmarks/decode_profile.py --smoke     # CPU: checks the script, no kernels

A profiled step runs slower than an unprofiled one (CUPTI adds a little to every kernel); the
split between families, not the absolute span, is what this is for.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: decode.py
import decode  # noqa: E402

from was_compile import calibrate, make_schedule  # noqa: E402

DEFAULT_OUT = os.path.join(decode.ROOT, "benchmarks", "results", "decode_profile.json")
# kernel name fragment -> family (first match wins; names as CUPTI reports them)
FAMILIES = (
    ("_sparse_gemv_kernel", "was GEMV"),
    ("_splitk_reduce_kernel", "was split-K reduction"),
    ("flash", "attention"),
    ("attention", "attention"),
    ("fmha", "attention"),
    ("triton_", "Inductor fused"),
    ("gemv", "cuBLAS"),
    ("gemm", "cuBLAS"),
    ("nvjet", "cuBLAS"),
    ("sm90_", "cuBLAS"),
    ("cutlass", "cuBLAS"),
    ("splitKreduce", "cuBLAS"),
    ("Memcpy", "copies"),
    ("Memset", "copies"),
    ("copy", "copies"),
)


def family(name: str) -> str:
    for frag, fam in FAMILIES:
        if frag.lower() in name.lower():
            return fam
    return "other"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="Llama-3-8B", choices=list(decode.MODELS))
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=None, help="fewer layers (default: all)")
    p.add_argument("--steps", type=int, default=16, help="profiled decode steps per variant")
    p.add_argument("--out", default=None, help=f"JSON results (default {DEFAULT_OUT})")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model: checks the script")
    return p.parse_args(argv)


def profile_steps(model, step, prompt, steps: int, trace_path: str, cuda: bool) -> None:
    """Prefill eagerly, warm the compiled ``step`` up (compiles, records the CUDA graph), then
    profile ``steps`` steps into the Chrome trace ``trace_path``."""
    cache = transformers.StaticCache(config=model.config, max_cache_len=prompt.shape[1] + steps + 4)
    logits = model(
        input_ids=prompt, use_cache=True, logits_to_keep=1, **{decode.CACHE_ARG: cache}
    ).logits
    tok = logits[:, -1, :].argmax(dim=-1, keepdim=True)
    for _ in range(3):
        torch.compiler.cudagraph_mark_step_begin()
        tok = step(model, tok, cache).clone()
    if cuda:
        torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            torch.compiler.cudagraph_mark_step_begin()
            tok = step(model, tok, cache).clone()
        if cuda:
            torch.cuda.synchronize()
    prof.export_chrome_trace(trace_path)


def summarize(trace_path: str, steps: int) -> dict:
    """Per-step microseconds from the trace's GPU events ("kernel", "gpu_memcpy",
    "gpu_memset"): span, busy (union of intervals), gaps, kernel count, and per family."""
    with open(trace_path) as f:
        events = json.load(f).get("traceEvents", [])
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    gpu.sort(key=lambda e: e["ts"])
    if not gpu:
        return {"steps": steps, "kernels_per_step": 0, "span_us": 0.0, "busy_us": 0.0,
                "gaps_us": 0.0, "families": {}, "top": []}  # fmt: skip
    busy, cur_start, cur_end = 0.0, gpu[0]["ts"], gpu[0]["ts"] + gpu[0]["dur"]
    for e in gpu[1:]:
        s, t = e["ts"], e["ts"] + e["dur"]
        if s > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = s, t
        else:
            cur_end = max(cur_end, t)
    busy += cur_end - cur_start
    span = max(e["ts"] + e["dur"] for e in gpu) - gpu[0]["ts"]
    fams: dict = collections.defaultdict(lambda: [0, 0.0])
    names: dict = collections.defaultdict(lambda: [0, 0.0])
    for e in gpu:
        fams[family(e["name"])][0] += 1
        fams[family(e["name"])][1] += e["dur"]
        names[e["name"][:90]][0] += 1
        names[e["name"][:90]][1] += e["dur"]
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:12]
    return {
        "steps": steps,
        "kernels_per_step": len(gpu) / steps,
        "span_us": span / steps,
        "busy_us": busy / steps,
        "gaps_us": (span - busy) / steps,
        "families": {k: {"per_step": c / steps, "us": t / steps} for k, (c, t) in fams.items()},
        "top": [{"name": n, "per_step": c / steps, "us": t / steps} for n, (c, t) in top],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = not args.smoke
    if cuda and not torch.cuda.is_available():
        print("decode_profile.py: no CUDA device; run it on the GPU machine or with --smoke",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.smoke:
        name, device, dtype = "tiny-llama", torch.device("cpu"), torch.float32
        out = args.out or os.path.join(tempfile.mkdtemp(prefix="was_prof_"), "profile.json")
    else:
        name, device, dtype = args.model, torch.device("cuda"), torch.bfloat16
        out = args.out or DEFAULT_OUT
    fam, shape = {**decode.MODELS, **decode.SMOKE_MODELS}[name]
    t0 = time.time()
    model = decode.build_model(fam, shape, 2 if args.smoke else args.layers, device, dtype)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randint(vocab, (1, 128), generator=gen).to(device) for _ in range(4)]
    prompt = torch.randint(vocab, (args.batch, 128), generator=gen).to(device)
    result = {"meta": {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke test)",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "triton": decode._version("triton"), "python": platform.python_version(),
        "model": name, "layers": model.config.num_hidden_layers, "batch": args.batch,
        "sparsity": args.sparsity, "steps": args.steps,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }}  # fmt: skip
    with torch.no_grad():
        sched = make_schedule(calibrate(model, calib, source="random tokens", progress=False),
                              args.sparsity, "was-uniform")  # fmt: skip
        for variant in ("dense", "was"):
            torch._dynamo.reset()
            step = decode.compile_step(model, sched if variant == "was" else None, args.smoke)
            trace = os.path.join(tempfile.mkdtemp(prefix="was_trace_"), f"{variant}.json")
            profile_steps(model, step, prompt, args.steps, trace, cuda)
            result[variant] = summarize(trace, args.steps)
    result["meta"]["elapsed_s"] = time.time() - t0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    for variant in ("dense", "was"):
        r = result[variant]
        print(
            f"\n{variant}: {r['kernels_per_step']:.0f} GPU events/step, span "
            f"{r['span_us']:.0f} us, busy {r['busy_us']:.0f} us, gaps {r['gaps_us']:.0f} us"
        )
        print(f"  {'family':<24}{'per step':>9}{'us':>9}")
        for k, v in sorted(r["families"].items(), key=lambda kv: -kv[1]["us"]):
            print(f"  {k:<24}{v['per_step']:>9.1f}{v['us']:>9.1f}")
        for t in r["top"][:8]:
            print(f"    {t['per_step']:>6.1f} x {t['us']:>8.1f} us  {t['name']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
