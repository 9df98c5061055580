"""End-to-end demo: calibrate a small real model, compile it with ``backend="was"``, generate
text, and print a table of sparsity, speed and quality.

    python -m was_compile.demo                      # SmolLM2-135M, Austen novels
    python -m was_compile.demo --model PATH --calib-text my.txt --eval-text other.txt

On a machine without a GPU the op runs its PyTorch reference (a masked dense matmul), so the
CPU speed column shows correctness, not the GPU kernels' speedup.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from . import calibrate, make_schedule, masked_inputs, measured_sparsity
from .backend import prepare
from .hf_cache import cache_kwargs, returned_cache
from .schedules.refine import refine_schedule


def perplexity(model, windows: torch.Tensor, thresholds: dict | None = None) -> float:  # noqa: ANN001
    """exp(mean next-token NLL) over windows [n, T]; every token sparsified if thresholds."""
    nll, count = 0.0, 0
    with torch.no_grad(), masked_inputs(model, thresholds or {}):
        for ids in windows.split(1):
            ids = ids.to(next(model.parameters()).device)
            logits = model(ids, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
            nll += float(loss)
            count += ids.shape[1] - 1
    return math.exp(nll / count)


def greedy_decode(step, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:  # noqa: ANN001
    """Greedy decoding with a KV cache through ``step(ids, past)``; returns (tokens, tok/s)."""
    out = step(prompt, None)
    past, tok = returned_cache(out), out.logits[:, -1:].argmax(-1)
    tokens = [tok]
    if prompt.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = step(tok, past)
        past, tok = returned_cache(out), out.logits[:, -1:].argmax(-1)
        tokens.append(tok)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return torch.cat(tokens, 1), (new_tokens - 1) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    from .data import load_text, token_windows
    from .models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, an HF folder, a .gguf")
    p.add_argument("--calib-text", default="austen:Pride & Prejudice")
    p.add_argument("--eval-text", default="austen:Emma")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.4, 0.5])
    p.add_argument("--method", default="was-uniform")
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt", default="It is a truth universally acknowledged, that")
    p.add_argument("--json", help="also write the table and generations to this JSON file")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model, tok, description = load_model(args.model, dtype=dtype, device=device)
    model.requires_grad_(False)
    try:
        calib_text, calib_desc = load_text(args.calib_text)
        eval_text, eval_desc = load_text(args.eval_text)
    except RuntimeError as err:  # no apt here: fall back to prose every Python ships
        print(f"{err}\nfalling back to Python's pydoc prose: first half calibrates, "
              "second half evaluates")  # fmt: skip
        text, desc = load_text("pydoc")
        half = len(text) // 2
        calib_text, calib_desc = text[:half], f"{desc}, first half"
        eval_text, eval_desc = text[half:], f"{desc}, second half"
    calib = token_windows(tok, calib_text, args.seq_len, args.calib_windows)
    evaluation = token_windows(tok, eval_text, args.seq_len, args.eval_windows)
    print(f"model: {description}\ncalibration: {calib_desc}\nevaluation: {eval_desc}\n")

    cal = calibrate(model, calib.to(device).split(2), source=calib_desc)
    prompt = tok(args.prompt, return_tensors="pt").input_ids.to(device)

    def eager_step(ids, past):  # noqa: ANN001, ANN202
        return model(ids, **cache_kwargs(model, past), use_cache=True)

    with torch.no_grad():
        dense_tokens, dense_tps = greedy_decode(eager_step, prompt, args.new_tokens)
    rows = [("dense", 0.0, 0.0, perplexity(model, evaluation), dense_tps, 1.0)]
    texts = {"dense": tok.decode(dense_tokens[0])}
    for s in args.sparsities:
        schedule = make_schedule(cal, s, method=args.method)
        schedule = refine_schedule(model, schedule, list(calib.to(device).split(2)), iterations=1)
        measured = measured_sparsity(
            model, schedule.thresholds, list(evaluation.to(device).split(2))
        )
        byte_sparsity = sum(measured[x.name] * x.numel for x in schedule.sites) / sum(
            x.numel for x in schedule.sites
        )
        ppl = perplexity(model, evaluation, schedule.thresholds)
        torch._dynamo.reset()
        prepare(model, schedule)
        options = {"schedule": schedule, "compiler": "inductor" if cuda else "eager"}
        compiled = torch.compile(model, backend="was", options=options)

        def step(ids, past, compiled=compiled):  # noqa: ANN001, ANN202
            return compiled(ids, **cache_kwargs(model, past), use_cache=True)

        with torch.no_grad():
            greedy_decode(step, prompt, 3)  # compile outside the timing
            tokens, tps = greedy_decode(step, prompt, args.new_tokens)
        label = f"{args.method} {100 * s:.0f}%"
        rows.append((label, s, byte_sparsity, ppl, tps, tps / dense_tps))
        texts[label] = tok.decode(tokens[0])

    print(f"\n{'run':<22}{'target':>8}{'measured':>10}{'ppl':>9}{'tok/s':>9}{'speedup':>9}")
    for label, s, m, ppl, tps, sp in rows:
        print(f"{label:<22}{100 * s:>7.0f}%{100 * m:>9.1f}%{ppl:>9.2f}{tps:>9.1f}{sp:>8.2f}x")
    where = "GPU, Triton kernels" if cuda else "CPU, PyTorch reference op (no speedup expected)"
    print(f"\nspeed measured on: {where}")
    print(f"perplexity on {args.eval_windows}x{args.seq_len} tokens, every token sparsified; "
          "measured = byte-weighted fraction of zeroed input channels")  # fmt: skip
    for label, text in texts.items():
        print(f"\n[{label}] {args.prompt}{text}")
    if args.json:
        keys = ("run", "target", "measured", "perplexity", "tokens_per_s", "speedup")
        doc = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
               "torch": torch.__version__, "model": description, "calibration": calib_desc,
               "evaluation": eval_desc, "args": vars(args),
               "rows": [dict(zip(keys, r)) for r in rows], "generations": texts}  # fmt: skip
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
