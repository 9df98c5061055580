"""Compile the sparse GEMV kernel for sm_90 without a GPU and read what the compiled code does.

For rows of ``benchmarks/results/kernels.json`` (the configs the H100 autotuner chose), it
compiles ``_sparse_gemv_kernel`` ahead of time with the same specialization a real launch gets
(bf16 x / weight, fp32 thresholds / partials, int32 scratch, 16-byte aligned pointers, ints
divisible by 16 marked so, M == 1 folded to a constant), through Triton's own binder:
``create_function_from_signature`` + ``JITFunction._pack_args`` + ``triton.compile(ASTSource,
target=GPUTarget("cuda", 90, 32))``. No CUDA driver is touched; ptxas and cuobjdump come with
the Triton wheel (``triton/backends/nvidia/bin``).

Per case it writes the TTGIR, PTX, SASS and an annotated listing of the main loop to --out, and
prints a table: registers, spills (local memory), shared memory, CTAs per SM (sm_90 limits),
instructions per loop iteration, 16-byte weight loads per thread and iteration, how many of
them are still in flight at the loop's back-edge (the software prefetch survived) and whether
the weight loads wait on loads of the same iteration (the x -> threshold -> mask chain).

Scoreboards: Volta..Hopper SASS carries, per instruction, a control field (bits 105..125 of
the 128-bit word, i.e. the second 64-bit word >> 41): stall cycles (4 bits), yield (1), the
scoreboard a variable-latency instruction signals when its result is written (3 bits, 7 =
none), the one it signals when its sources are read (3), a mask of scoreboards to wait for
before issuing (6) and operand reuse flags (4). A wait on a scoreboard waits for ALL loads
counting on it, so a wait in the loop body on a scoreboard used by this iteration's weight
loads means those loads are not in flight across the back-edge.

    python benchmarks/kernel_sass.py                         # Llama-3-8B, M = 1 and 4, 0/50/70%
    python benchmarks/kernel_sass.py --rows Llama-3-8B:gate_up:1:0.5 --listing
    python benchmarks/kernel_sass.py --kernel-file /tmp/variant.py   # a modified copy
    python benchmarks/kernel_sass.py --fit                   # latency + bytes model of kernels.json
    python benchmarks/kernel_sass.py --config '{"BLOCK_N": 256, "BLOCK_K": 16, "K_ITERS": 8,
        "WIDE": 1, "num_warps": 1}'                          # one explicit config for all rows

To compile with the Triton the H100 run used (3.6.0, see kernels.json meta), install its wheel
into a folder and put it first on the path:
``pip install --no-deps --target /tmp/t36 triton==3.6.0`` then ``PYTHONPATH=/tmp/t36 python ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "kernels.json"
KERNEL_FILE = ROOT / "was_compile" / "kernels" / "triton_sparse_gemv.py"

# sm_90 (H100) limits used for the occupancy estimate
SM90_REGS_PER_SM = 65536
SM90_MAX_WARPS = 64
SM90_MAX_CTAS = 32
SM90_SMEM_PER_SM = 228 * 1024
SM90_SMEM_RESERVED_PER_CTA = 1024
H100_SMS = 132
H100_CLOCK_HZ = 1.755e9  # SM clock under a memory-bound load (boost is up to 1.98 GHz)

DEFAULT_ROWS = [
    f"Llama-3-8B:{shape}:{m}:{sp}"
    for m in (1, 4)
    for shape in ("qkv", "o", "gate_up", "down")
    for sp in (0.0, 0.5, 0.7)
]


def load_kernel_module(kernel_file: Path | None):
    """The kernel module: the package's own, or a modified copy of the file (imported as a
    sibling of the package's autotune_configs, so its relative import resolves)."""
    sys.path.insert(0, str(ROOT))
    if kernel_file is None:
        from was_compile.kernels import triton_sparse_gemv

        return triton_sparse_gemv
    tmp = Path(tempfile.mkdtemp(prefix="kernel_sass_"))
    pkg = tmp / "sass_variant"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for sibling in (ROOT / "was_compile" / "kernels").glob("*.py"):  # its relative imports
        if sibling.name != "__init__.py":
            shutil.copy(sibling, pkg)
    shutil.copy(kernel_file, pkg / "triton_sparse_gemv.py")
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location(
        "sass_variant.triton_sparse_gemv", pkg / "triton_sparse_gemv.py"
    )
    importlib.import_module("sass_variant")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def nvidia_tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name}: not in the Triton wheel nor on PATH")
    return found


def compile_case(mod, n: int, k: int, ends: list, m: int, sparsity: float, config: dict):
    """Compile _sparse_gemv_kernel for sm_90 with the arguments sparse_gemv would pass."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.runtime.jit import MockTensor, create_function_from_signature

    from was_compile.kernels.autotune_configs import MAX_SEGMENTS, m_bucket, sparsity_bucket

    fn = mod._sparse_gemv_kernel
    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bf16, f32, i32 = (MockTensor(t) for t in (torch.bfloat16, torch.float32, torch.int32))
    e_args = list(ends) + [n] * (MAX_SEGMENTS - len(ends))
    seg_aligned = all(e % 16 == 0 for e in ends)
    # kernel files from 2026-11-24 on (atomic split-K reduction) take ticket_ptr, bias_ptr,
    # y_ptr after the scratch pointers and ATOMIC_REDUCE, HAS_BIAS after INTERPRET
    atomic = "ticket_ptr" in fn.arg_names
    # from 2026-11-24: the output activation's h_ptr and HALF, after y_ptr and stride_thr
    # (12973ab..), then after SPARSITY_BUCKET
    names = fn.arg_names
    act = "h_ptr" in names
    act_late = act and names.index("h_ptr") > names.index("SPARSITY_BUCKET")
    act_early = act and not act_late
    args = (
        bf16, bf16, f32, f32, i32, i32, *((i32, bf16, bf16) if atomic else ()),
        *((bf16,) if act_early else ()),
        m, n, k, k, k, *((n // 2,) if act_early else ()),
        *e_args,
        sparsity_bucket(sparsity), *((bf16, n // 2) if act_late else ()),
        m_bucket(m), seg_aligned, False,
        *((True, False) if atomic else ()),
    )  # fmt: skip
    meta = {key: config[key] for key in ("BLOCK_N", "BLOCK_K", "K_ITERS", "USE_DOT", "COMPACT")}
    for opt in ("PIPE", "WIDE", "ACT", "GATED"):  # only passed when set (PIPE: kernel files
        # before 2026-11-23; ACT, GATED: the output activation, from 2026-11-24)
        if config.get(opt, 0):
            meta[opt] = config[opt]
    kwargs = {**meta, "num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    if config.get("maxnreg"):
        kwargs["maxnreg"] = config["maxnreg"]
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


# ----------------------------------------------------------------------------- SASS reading

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]{16}) \*/")
_WORD = re.compile(r"/\* (0x[0-9a-f]{16}) \*/")


def parse_sass(text: str) -> list:
    """[(address, text, control)] with control = dict(stall, yield, wr, rd, wait)."""
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _INSN.search(line)
        if not m or i + 1 >= len(lines):
            continue
        hi = _WORD.search(lines[i + 1])
        if not hi:
            continue
        c = int(hi.group(1), 16) >> 41
        ctrl = {
            "stall": c & 15,
            "yield": (c >> 4) & 1,
            "wr": (c >> 5) & 7,
            "rd": (c >> 8) & 7,
            "wait": (c >> 11) & 63,
        }
        out.append((int(m.group(1), 16), m.group(2).strip(), ctrl))
    return out


def _opcode(text: str) -> str:
    parts = text.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def _is_global_load(text: str) -> bool:
    op = _opcode(text)
    return op.startswith("LDG") or op.startswith("LDGSTS")


def _is_wide(text: str) -> bool:
    return ".128" in _opcode(text)


def find_loops(insns: list) -> list:
    """(first index, branch index) of every backward branch that is not a self-loop."""
    addr_to_idx = {a: i for i, (a, _, _) in enumerate(insns)}
    loops = []
    for i, (addr, text, _) in enumerate(insns):
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if m:
            target = int(m.group(1), 16)
            if target < addr and target in addr_to_idx:
                loops.append((addr_to_idx[target], i))
    return loops


def analyse_loop(insns: list, first: int, last: int) -> dict:
    """Simulate the scoreboards over two passes of the loop body (the second pass starts with
    what the first left in flight) and report what the steady state keeps in flight."""
    body = insns[first : last + 1]
    pending: dict = {}  # scoreboard -> [(pass, index in body, wide)]
    waited_in_pass: list = []  # (load index, waiting index) for loads issued in pass 1
    wide_wait_chain = set()  # narrow loads of this pass waited on before a wide load issues
    max_wide = 0
    min_wide = 1 << 30  # fewest in flight at any point of the second pass
    for p in range(2):
        narrow_waited_before_wide = 0
        seen_wide = False
        for j, (_, text, ctrl) in enumerate(body):
            for sb in range(6):
                if ctrl["wait"] >> sb & 1 and pending.get(sb):
                    for lp, lj, wide in pending[sb]:
                        if p == 1 and lp == 1:
                            waited_in_pass.append((lj, j))
                        if p == 1 and lp == 1 and not wide and not seen_wide:
                            narrow_waited_before_wide += 1
                    pending[sb] = []
            m = re.search(r"DEPBAR\.LE SB(\d), (0x[0-9a-f]+|\d+)", text)
            if m:
                sb, keep = int(m.group(1)), int(m.group(2), 0)
                if len(pending.get(sb, [])) > keep:
                    pending[sb] = pending[sb][len(pending[sb]) - keep :]
            if _is_global_load(text) and ctrl["wr"] != 7:
                wide = _is_wide(text)
                if wide and not seen_wide and p == 1:
                    seen_wide = True
                    if narrow_waited_before_wide:
                        wide_wait_chain.add(narrow_waited_before_wide)
                pending.setdefault(ctrl["wr"], []).append((p, j, wide))
            if p == 1:
                in_flight = sum(1 for v in pending.values() for (_, _, w) in v if w)
                max_wide = max(max_wide, in_flight)
                min_wide = min(min_wide, in_flight)
    cp_async = sum(1 for _, t, _ in body if _opcode(t).startswith("LDGSTS"))
    wide_idx = [j for j, (_, t, _) in enumerate(body) if _is_global_load(t) and _is_wide(t)]
    narrow_idx = [j for j, (_, t, _) in enumerate(body) if _is_global_load(t) and not _is_wide(t)]
    waited_wide = {lj: wj for lj, wj in waited_in_pass if lj in wide_idx}
    return {
        "first_addr": body[0][0],
        "branch_addr": body[-1][0],
        "instructions": len(body),
        "wide_loads": len(wide_idx),
        "cp_async_16B": cp_async,
        "bar_sync": sum(1 for _, t, _ in body if _opcode(t).startswith("BAR")),
        "narrow_loads": len(narrow_idx),
        "ffma": sum(1 for _, t, _ in body if _opcode(t).startswith("FFMA")),
        "wide_in_flight_at_backedge": len(wide_idx) - len(waited_wide),
        "max_wide_in_flight": max_wide,
        "min_wide_in_flight": min_wide if min_wide < 1 << 30 else 0,
        "wide_scoreboards": sorted({body[j][2]["wr"] for j in wide_idx if body[j][2]["wr"] != 7}),
        "wide_waited_in_same_pass_by": sorted(
            {body[wj][1].split()[0] for wj in waited_wide.values()}
        ),
        "wide_issue_waits_on_narrow_loads": max(wide_wait_chain) if wide_wait_chain else 0,
    }


def annotate(insns: list, first: int, last: int) -> str:
    out = []
    for addr, text, c in insns[first : last + 1]:
        wait = ",".join(f"SB{b}" for b in range(6) if c["wait"] >> b & 1)
        wr = f"W=SB{c['wr']}" if c["wr"] != 7 else ""
        rd = f"R=SB{c['rd']}" if c["rd"] != 7 else ""
        w = f"wait:{wait}" if wait else ""
        out.append(f"{addr:05x}  {text:62s} st={c['stall']:2d} {wr:6s} {rd:6s} {w}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- occupancy


def ctas_per_sm(regs: int, warps: int, smem: int) -> tuple:
    """(CTAs per SM, limiter) on sm_90: registers are allocated per warp in 256-register
    units of (regs rounded up to 8) x 32 lanes."""
    regs8 = -(-max(regs, 1) // 8) * 8
    per_warp = -(-regs8 * 32 // 256) * 256
    by_regs = (SM90_REGS_PER_SM // per_warp) // warps
    by_warps = SM90_MAX_WARPS // warps
    by_smem = SM90_SMEM_PER_SM // (smem + SM90_SMEM_RESERVED_PER_CTA)
    limits = {"regs": by_regs, "warps": by_warps, "smem": by_smem, "ctas": SM90_MAX_CTAS}
    name = min(limits, key=limits.get)
    return limits[name], name


def cuobjdump(option: str, cubin: Path) -> str:
    """What the Triton wheel's cuobjdump prints for ``cuobjdump OPTION CUBIN``."""
    return subprocess.run(
        [nvidia_tool("cuobjdump"), option, str(cubin)], capture_output=True, text=True, check=True
    ).stdout


def resource_usage(cubin: Path) -> dict:
    out = cuobjdump("--dump-resource-usage", cubin)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    keys = ("regs", "stack", "shared", "local")
    return dict(zip(keys, map(int, m.groups()))) if m else {}


# ----------------------------------------------------------------------------- cases


def select_rows(specs: list) -> list:
    data = json.loads(RESULTS.read_text())
    rows = []
    for spec in specs:
        model, shape, m, sp = spec.split(":")
        for r in data["rows"]:
            if (r["model"], r["shape"], r["M"]) == (model, shape, int(m)) and abs(
                r["sparsity"] - float(sp)
            ) < 1e-9:
                rows.append(r)
    return rows


def config_name(c: dict) -> str:
    kind = "dot" if c["USE_DOT"] else "fma"
    pipe = f"_p{c['PIPE']}" if c.get("PIPE", 0) else ""
    pipe += "_wide" if c.get("WIDE", 0) else ""
    pipe += f"_r{c['maxnreg']}" if c.get("maxnreg") else ""
    return (
        f"{c['BLOCK_N']}x{c['BLOCK_K']}x{c['K_ITERS']}_{kind}_c{c['COMPACT']}"
        f"_w{c['num_warps']}_s{c['num_stages']}{pipe}"
    )


def run_cases(args) -> list:
    import triton

    mod = load_kernel_module(Path(args.kernel_file) if args.kernel_file else None)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = {}
    results = []
    for r in select_rows(args.rows):
        c = dict(r["config"])
        if args.config:  # an explicit config for every row (e.g. a new tile shape)
            c = {"USE_DOT": 0, "COMPACT": 0, "num_stages": 1, **json.loads(args.config)}
        if args.maxnreg:
            c["maxnreg"] = args.maxnreg
        r = {**r, "config": c}
        key = (r["N"], r["K"], tuple(r["segment_ends"]), min(r["M"], 4), config_name(c))
        if key not in seen:
            kernel = compile_case(mod, r["N"], r["K"], r["segment_ends"], r["M"], r["sparsity"], c)
            name = f"{r['shape']}_M{r['M']}_{config_name(c)}"
            for ext in ("ttgir", "ptx"):
                (out_dir / f"{name}.{ext}").write_text(kernel.asm[ext])
            cubin = out_dir / f"{name}.cubin"
            cubin.write_bytes(kernel.asm["cubin"])
            sass = cuobjdump("-sass", cubin)
            (out_dir / f"{name}.sass").write_text(sass)
            insns = parse_sass(sass)
            loops = [
                (f, b)
                for f, b in find_loops(insns)
                if any(_is_global_load(t) for _, t, _ in insns[f : b + 1])
            ]
            res = resource_usage(cubin)
            ctas, limiter = ctas_per_sm(res["regs"], c["num_warps"], res["shared"])
            info = {"name": name, **res, "ctas_per_sm": ctas, "limiter": limiter, "loops": []}
            listing = []
            for f, b in loops:
                info["loops"].append(analyse_loop(insns, f, b))
                listing.append(annotate(insns, f, b))
            (out_dir / f"{name}.loop.txt").write_text("\n".join(listing))
            ptx = kernel.asm["ptx"]
            info["ptx_ld_v4"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32", ptx))
            info["ptx_unpack_after_ld"] = len(re.findall(r"mov\.b32\s+\{%rs", ptx))
            seen[key] = info
            if args.listing:
                print(f"== {name}\n" + "\n".join(listing))
        info = seen[key]
        results.append((r, info))
    print(f"triton {triton.__version__}, ptxas {ptxas_version()}, sm_90; files in {out_dir}")
    print_table(results)
    return results


def ptxas_version() -> str:
    import triton

    try:
        from triton.backends.nvidia.compiler import get_ptxas_version

        return str(get_ptxas_version(90)).strip().splitlines()[-1]
    except Exception:  # older/newer Triton: ask the binary
        out = subprocess.run([nvidia_tool("ptxas"), "--version"], capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1] if out.stdout else triton.__version__


def print_table(results: list) -> None:
    hdr = (
        "| shape | M | sp | config | was_us | limit_us | regs | spill (local B) | smem | CTA/SM | "
        "loop insns | 16B loads per thread and pass | 16B loads in flight at back-edge | "
        "max 16B loads in flight | min 16B loads in flight | scoreboards of the 16B loads | "
        "narrow loads waited on before the 1st 16B load |"
    )
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r, info in results:
        lp = max(info["loops"], key=lambda x: x["wide_loads"], default=None)
        if lp is None:
            loop_cols = "- | - | - | - | - | - | -"
        elif lp["cp_async_16B"]:
            loop_cols = (
                f"{lp['instructions']} | cp.async {lp['cp_async_16B']} "
                f"({lp['bar_sync']} BAR.SYNC) | - | - | - | - | -"
            )
        else:
            loop_cols = (
                f"{lp['instructions']} | {lp['wide_loads']} | "
                f"{lp['wide_in_flight_at_backedge']} | {lp['max_wide_in_flight']} | "
                f"{lp['min_wide_in_flight']} | "
                f"{','.join(f'SB{b}' for b in lp['wide_scoreboards'])} | "
                f"{lp['wide_issue_waits_on_narrow_loads']}"
            )
        print(
            f"| {r['shape']} | {r['M']} | {r['sparsity']:.2f} | {config_name(r['config'])} | "
            f"{r['was_us']:.1f} | {r['limit_us']:.1f} | {info['regs']} | {info['local']} | "
            f"{info['shared']} | {info['ctas_per_sm']} ({info['limiter']}) | {loop_cols} |"
        )


# ----------------------------------------------------------------------------- model fit


def fit_latency_model() -> None:
    """Least squares over the M = 1 FMA-path rows of kernels.json:
    was_us = t0 + K_ITERS * (per-iteration latency, masked / compact) + kept weight bytes / B.
    A good fit with B near the copy bandwidth means latency and transfer add up instead of
    overlapping (the loop is a chain of round trips)."""
    import numpy as np

    data = json.loads(RESULTS.read_text())
    rows = [r for r in data["rows"] if r["M"] == 1 and not r["config"]["USE_DOT"]]
    x, y = [], []
    for r in rows:
        c = r["config"]
        kept_mb = r["union_kept"] * r["K"] * r["N"] * 2 / 1e6
        iters = c["K_ITERS"]
        x.append([1.0, iters * (1 - c["COMPACT"]), iters * c["COMPACT"], kept_mb])
        y.append(r["was_us"])
    a, b = np.array(x), np.array(y)
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    pred = a @ coef
    print(f"{len(b)} rows (M = 1, FMA path), was_us = t0 + iters * l + MB / B:")
    print(f"  t0 = {coef[0]:.1f} us, l(masked) = {coef[1] * 1e3:.0f} ns/iter,")
    print(f"  l(compact) = {coef[2] * 1e3:.0f} ns/iter, B = {1 / coef[3]:.2f} TB/s")
    rms = float(np.sqrt(np.mean((pred - b) ** 2)))
    print(f"  rms error {rms:.1f} us, median |rel| {np.median(np.abs(pred - b) / b) * 100:.0f}%")
    print("Per shape, one config, 50..90% (slope and intercept in the union kept fraction):")
    groups: dict = {}
    for r in rows:
        if r["sparsity"] >= 0.5:
            groups.setdefault((r["model"], r["shape"], config_name(r["config"])), []).append(r)
    for (model, shape, cfg), rs in sorted(groups.items()):
        if len(rs) < 3 or model != "Llama-3-8B":
            continue
        u = np.array([r["union_kept"] for r in rs])
        t = np.array([r["was_us"] for r in rs])
        slope, icpt = np.polyfit(u, t, 1)
        dense_mb = rs[0]["K"] * rs[0]["N"] * 2 / 1e6
        iters = rs[0]["config"]["K_ITERS"]
        print(
            f"  {shape:8s} {cfg:28s} n={len(rs)}: t = {icpt:.1f} + {slope:.1f} * u us "
            f"(bytes at {dense_mb / slope:.2f} TB/s, {icpt / iters * 1e3:.0f} ns per "
            f"iteration of fixed latency over {iters} iterations)"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help="MODEL:SHAPE:M:SPARSITY")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "kernel_sass"))
    ap.add_argument("--kernel-file", default=None, help="compile a modified copy of the kernel")
    ap.add_argument("--maxnreg", type=int, default=0, help="cap registers per thread")
    ap.add_argument("--listing", action="store_true", help="print the annotated main loop")
    ap.add_argument(
        "--config",
        default=None,
        help='compile every row with this config instead, as JSON, e.g. \'{"BLOCK_N": 512, '
        '"BLOCK_K": 16, "K_ITERS": 8, "WIDE": 1, "num_warps": 2}\'',
    )
    ap.add_argument("--fit", action="store_true", help="fit the latency + bytes model only")
    args = ap.parse_args(argv)
    if args.fit:
        fit_latency_model()
        return
    warnings.filterwarnings("ignore", message=".*FP_FUSION.*")
    run_cases(args)


if __name__ == "__main__":
    main()
