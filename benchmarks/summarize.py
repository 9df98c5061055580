"""Markdown tables and target checks from the committed benchmark results.

Reads ``benchmarks/results/{kernels,decode,quality,quality_dense_prompt}.json`` (whichever
exist) and prints the tables the README quotes, each with the device and versions of its run
and a PASS/FAIL line per target of the issues. Nothing is measured here; every figure is
copied from the JSON.

    python benchmarks/summarize.py                 # print
    python benchmarks/summarize.py --out benchmarks/results/summary.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _load(name: str) -> dict | None:
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check(ok: bool, text: str) -> str:
    return f"- {'PASS' if ok else 'FAIL'}: {text}"


def kernels_section(data: dict) -> list[str]:
    meta, rows = data["meta"], data["rows"]
    out = [
        "### Kernels (`benchmarks/kernels.py`)",
        "",
        f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, {meta['dtype']}, "
        f"copy bandwidth {meta['copy_bandwidth_Bps'] / 1e12:.2f} TB/s; {meta['timing']}. "
        "Each cell: speedup over cuBLAS `F.linear` on the fused weight / fraction of the byte "
        "limit, same run.",
        "",
    ]
    sps = sorted({r["sparsity"] for r in rows})
    for model, m in [("Llama-3-8B", 1), ("Llama-3-8B", 8), ("Llama-3.2-1B", 1)]:
        sel = [r for r in rows if r["model"] == model and r["M"] == m]
        if not sel:
            continue
        out += [
            f"{model}, M = {m}:",
            "",
            "| shape | N x K | " + " | ".join(f"{s:.0%}" for s in sps) + " |",
            "|---|---|" + "---|" * len(sps),
        ]
        for shape in dict.fromkeys(r["shape"] for r in sel):
            cells = {r["sparsity"]: r for r in sel if r["shape"] == shape}
            r0 = next(iter(cells.values()))
            line = f"| {shape} | {r0['N']} x {r0['K']} | "
            line += " | ".join(
                f"{cells[s]['speedup_vs_cublas']:.2f}x / {cells[s]['fraction_of_limit']:.0%}"
                if s in cells
                else "-"
                for s in sps
            )
            out.append(line + " |")
        out.append("")
    llama1 = [r for r in rows if r["model"] == "Llama-3-8B" and r["M"] == 1]
    big = [r for r in llama1 if r["shape"] in ("gate_up", "down") and r["sparsity"] == 0.5]
    mid = [r for r in llama1 if 0.25 <= r["sparsity"] <= 0.70]
    zero = [r for r in llama1 if r["sparsity"] == 0.0]
    m8 = [r for r in rows if r["model"] == "Llama-3-8B" and r["M"] == 8 and r["union_kept"] < 0.7]
    out += ["Targets (issue 4, Llama-3-8B shapes, bf16):", ""]
    if big:
        out.append(
            _check(
                all(r["speedup_vs_cublas"] >= 1.9 for r in big),
                "M=1, 50%: >= 1.9x cuBLAS on 4096x14336 and 14336x4096: "
                + ", ".join(f"{r['shape']} {r['speedup_vs_cublas']:.2f}x" for r in big),
            )
        )
    if mid:
        worst = min(mid, key=lambda r: r["fraction_of_limit"])
        out.append(
            _check(
                worst["fraction_of_limit"] >= 0.9,
                f">= 90% of the limit at 25-70% on every shape: worst "
                f"{worst['fraction_of_limit']:.0%} ({worst['shape']}, {worst['sparsity']:.0%})",
            )
        )
    if zero:
        worst = min(zero, key=lambda r: r["speedup_vs_cublas"])
        out.append(
            _check(
                worst["speedup_vs_cublas"] >= 0.95,
                f"0%: kernel >= 0.95x cuBLAS: worst {worst['speedup_vs_cublas']:.2f}x "
                f"({worst['shape']}); the backend itself runs cuBLAS for sites at sparsity 0",
            )
        )
    if m8:
        worst = min(m8, key=lambda r: r["speedup_vs_cublas"])
        out.append(
            _check(
                worst["speedup_vs_cublas"] > 1.0,
                f"M=8 faster than cuBLAS where the union keeps < 70%: worst "
                f"{worst['speedup_vs_cublas']:.2f}x ({worst['shape']}, union kept "
                f"{worst['union_kept']:.0%})",
            )
        )
    elif rows:
        out.append("- n/a: M=8, union of kept channels < 70%: no such row was measured")
    out.append("")
    return out


def decode_section(data: dict) -> list[str]:
    meta, rows = data["meta"], data["rows"]
    runs = meta.get("runs", [meta])
    r0 = runs[0]
    out = [
        "### End-to-end decode (`benchmarks/decode.py`)",
        "",
        f"{meta['device']}, torch {r0['torch']}, triton {r0['triton']}, transformers "
        f"{r0['transformers']}, bf16, random weights of the real shapes, thresholds from a "
        "calibration (was-uniform), static KV cache, prompt 128 + 256 new tokens; dense and "
        '`backend="was"` both with CUDA graphs, speedup against the dense row of the same '
        "run.",
        "",
        "| model | batch | sparsity | measured | ms/token | tok/s | speedup | byte limit | "
        "ideal | of ideal | compile s | peak vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))  # rows of several runs, in order
    rows = sorted(rows, key=lambda r: (models.index(r["model"]), r["batch"],
                                       r["variant"] != "dense", r["sparsity"]))  # fmt: skip
    for r in rows:
        sp = r["measured_union_sparsity"] if r["batch"] > 1 else r["measured_sparsity"]
        out.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} {r['sparsity']:.0%} | {sp:.0%} | "
            f"{r['ms_per_token']:.2f} | {r['tok_per_s']:.0f} | {r['speedup']:.2f}x | "
            f"{r['byte_limit']:.2f}x | {r['ideal']:.2f}x | {r['fraction_of_ideal']:.0%} | "
            f"{r['compile_s']:.0f} | {r['peak_vs_dense']:.3f} |"
        )
    b1 = {r["sparsity"]: r for r in rows if r["model"] == "Llama-3-8B" and r["batch"] == 1}
    out += ["", "Targets (issue 5, Llama-3-8B shape, batch 1):", ""]
    for s, need in ((0.5, 1.60), (0.6, 1.80)):
        if s in b1 and b1[s]["variant"] == "was":
            got = b1[s]["speedup"]
            out.append(_check(got >= need, f"{s:.0%}: >= {need:.2f}x dense: {got:.2f}x"))
    sparse = [r for s, r in b1.items() if r["variant"] == "was" and s > 0]
    if sparse:
        worst = min(sparse, key=lambda r: r["fraction_of_ideal"])
        out.append(
            _check(
                worst["fraction_of_ideal"] >= 0.9,
                f">= 0.9 of the harness's ideal: worst {worst['fraction_of_ideal']:.2f} "
                f"at {worst['sparsity']:.0%}",
            )
        )
    if 0.0 in b1 and b1[0.0]["variant"] == "was":
        got = b1[0.0]["speedup"]
        out.append(_check(abs(got - 1) <= 0.03, f"0%: within 3% of dense: {got:.3f}x"))
    peaks = [r["peak_vs_dense"] for r in rows if r["variant"] == "was"]
    if peaks:
        out.append(_check(max(peaks) <= 1.05, f"peak memory within 5%: max {max(peaks):.3f}"))
    out.append("")
    return out


def quality_section(data: dict) -> list[str]:
    meta, rows = data["meta"], data["rows"]
    prefix = meta.get("dense_prefix", 0)
    if prefix:
        title = (
            f"### Quality after a dense prompt (`benchmarks/quality.py --dense-prefix {prefix}`)"
        )
        protocol = (
            f"Each window's first {prefix} token(s) dense in search and evaluation (a prompt "
            "prefilled dense, the backend's default), every later token sparsified; in "
            "brackets the byte-weighted sparsity achieved on the evaluation text, the dense "
            "token(s) counted as kept."
        )
    else:
        title = "### Quality (`benchmarks/quality.py`)"
        protocol = (
            "Perplexity with every evaluated token sparsified; in brackets the byte-weighted "
            "sparsity achieved on the evaluation text."
        )
    out = [
        title,
        "",
        f"{meta['device']}, torch {meta['torch']}, transformers "
        f"{meta.get('transformers', '?')}, {meta['dtype']}. Texts: "
        + ", ".join(f"{k} {v}" for k, v in meta["texts"].items())
        + ". "
        + protocol,
        "",
    ]
    methods = ["dense", "teal-uniform", "teal", "was-uniform", "was-greedy", "was-tpe"]
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        sps = sorted({r["sparsity"] for r in sel if r["method"] != "dense"})
        out += [
            f"{model}:",
            "",
            "| method | " + " | ".join(f"{s:.0%}" for s in sps) + " |",
            "|---|" + "---|" * len(sps),
        ]
        dense = [r["ppl"] for r in sel if r["method"] == "dense"]
        if not dense and "ppl_increase" in sel[0]:
            dense = [sel[0]["ppl"] - sel[0]["ppl_increase"]]  # the rows carry their increase
        if dense:
            out.append(f"| dense | {dense[0]:.2f} |" + " |" * (len(sps) - 1))
        for method in methods[1:]:
            cells = {r["sparsity"]: r for r in sel if r["method"] == method}
            if not cells:
                continue
            out.append(
                f"| {method} | "
                + " | ".join(
                    f"{cells[s]['ppl']:.1f} ({cells[s]['achieved_sparsity']:.1%})"
                    if s in cells
                    else "-"
                    for s in sps
                )
                + " |"
            )
        out.append("")
    out += ["Targets (issue 5):", ""]
    for model, checks in meta.get("targets", {}).items():
        for c in checks:
            out.append(
                f"- {c['status']}: {model}, {c['sparsity']:.0%}: {c['rule']}: ratio "
                f"{c['ratio']:.2f} (was-tpe +{c['was_tpe_increase']:.1f}, "
                f"teal +{c['teal_increase']:.1f})"
            )
    out.append("")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the Markdown to this file")
    p.add_argument(
        "--only",
        choices=["kernels", "decode", "quality", "quality_dense_prompt"],
        help="one section",
    )
    args = p.parse_args(argv)
    lines: list[str] = []
    for name, section in (
        ("kernels", kernels_section),
        ("decode", decode_section),
        ("quality", quality_section),
        ("quality_dense_prompt", quality_section),
    ):
        data = _load(name) if args.only in (None, name) else None
        if data is not None:
            lines += section(data)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
