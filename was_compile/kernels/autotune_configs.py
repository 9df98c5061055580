"""The one place where the tuning candidates of the sparse GEMV kernel are generated.

How the space was chosen (target: H100 SXM, 132 SMs, ~3.0 TB/s HBM3, 50 MB L2; decode GEMV is
memory bound, so every choice is about bytes in flight and coalescing, not FLOPs):

* BLOCK_N (columns of ``weight_t`` per CTA, the contiguous axis): 64..512. One row segment is
  BLOCK_N * elem_size bytes, >= 128 B for bf16/fp16 (a full 128-byte line) and 16-byte vector
  loads per thread (8 bf16), so a warp instruction reads 1..4 whole rows and a dropped channel
  removes whole instructions, not lanes of one.
* BLOCK_K (rows per loop iteration) x BLOCK_N sets the bytes each CTA has in flight per iteration
  (4-32 KB at 16-bit weights). ~18 KB in flight per SM covers HBM latency at 3 TB/s; several CTAs
  per SM make up the rest, hence the register budget in ``_fits_registers``.
* K_ITERS: iterations per CTA. Split-K is expressed as a chunk of CHUNK_K = BLOCK_K * K_ITERS
  rows per CTA (64..2048), so the number of K splits is cdiv(K, CHUNK_K) and the loop bound is
  a constexpr (interpreter friendly, fully static loop on the GPU). The grid is
  (column tiles) x (K splits); the pruner ranks configs by the warps they launch (4..64 per
  SM, best near 24) and keeps those whose fp32 split-K traffic stays under 25% (atomic
  reduction, into L2) or 10% (ordered reduction, written and read back) of the weight bytes.
  The dot path also has 64- and 128-channel chunks (small shapes at M = 2-16).
* USE_DOT: M >= 5 rows (buckets 8, 16) use ``tl.dot`` (mma, x padded to 16 rows): 16 FMAs
  per weight element on CUDA cores would compete with the memory stream (wide FMA tiles for
  M = 5-8, rows 4-7 as a second group of four, were tried on the H100 on 2026-11-24 and never
  won: kernel_notes section 11). M = 4 may use the dot
  path, the default FMA tiles (one elementwise [BLOCK_K, BLOCK_N] fp32 accumulator per row,
  reduced over K once at the end) or the wide ones (all are timed); M = 2 the wide tiles or
  the dot path; M = 1 the wide tiles only (below). The default FMA tiles never run at M <= 2.
* COMPACT: 0 = masked rows (a dropped row's loads are predicated off), 1 = each CTA first
  lists its chunk's kept channels and then reads BLOCK_K kept rows per iteration. At high
  sparsity the masked variant keeps few bytes in flight per iteration (latency bound), the
  compacting one pays a prefix sum per CTA; both are timed for sparsity buckets >= 50% and for
  the unknown bucket, only the masked one below 50%.
* num_warps 4/8; num_stages 1 for the FMA path (Triton does not software-pipeline loads that
  feed no dot: checked in sm_90 PTX from Triton 3.9, no cp.async with 3 stages, so other values only
  duplicate timings; latency is hidden by 2-4 resident CTAs per SM and by loading the next
  x / thresholds before the current weight tile is consumed), 3 for the dot path (operands
  go through shared memory with cp.async pipelining).

* WIDE = 1 (``fma_wide.py``, M <= 4): BLOCK_N = 256 columns per warp, every lane holds all
  BLOCK_K rows of its 8 columns (BLOCK_K 16-byte loads in one burst, K summed in-thread).
  Tiles and chunks from the H100 probes of benchmarks/results/tile_probe*.json (kernel_notes.md
  section 8): 1-2 warp CTAs, BLOCK_K 8-32, chunks of 64-256 channels (2-32 steps), i.e. many
  small independent CTAs, ~16-30 warps per SM. Beat the other FMA tiles at every Llama-3-8B
  shape at 0-70% (gate|up 50%: 58 vs 72 us; down 50%: 37 vs 47 us; 0%: ~cuBLAS). Rows of x
  held per lane grow with M, so M = 4 keeps BLOCK_K <= 8.

The full list has 186 entries; ``candidate_configs`` keeps at most ``MAX_CANDIDATES`` per
tuning key and family (few K splits; with the atomic reduction also many: ``_prune_cached``),
round robin over the masked, compacting and wide variants, most promising tiles first, and at
M >= 3 adds every masked dot tile's two best split counts and the 2-warp dot tiles, so
first-call tuning of one key costs <= 12 compiles at M = 1, <= 24 at M = 2 and <= 40 at
M >= 3 (cached across keys and processes by Triton) + as many short timings. The ranking
counts warps, not CTAs: about 24 warps launched per SM (1-warp wide CTAs and 4-warp tiles
alike) is the target.
The candidates are timed, and the choice cached on disk, by ``gemv_tuner`` (decode's own
protocol; ``triton.autotune`` ranked them differently); then the fastest three are timed again
under register caps (``refinement_variants``: at most 5 more compiles and timings a key).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import triton

# Segments (sibling linears fused in one launch) the kernel signature can carry.
MAX_SEGMENTS = 8
# Largest number of rows of x (decode batch) the kernel accepts.
MAX_M = 16
# Candidates per tuning key and family (few / many K splits) after pruning; in the many-splits
# family each variant (masked / compacting x default / wide tiles) keeps at least
# MIN_PER_VARIANT.
MAX_CANDIDATES = 12
MIN_PER_VARIANT = 2
# SMs assumed when no CUDA device can be asked (H100 SXM).
DEFAULT_SM_COUNT = 132
# Largest fraction of the (dense) weight bytes the fp32 split-K partials may add: ordered
# reduction (partials written, then read by a second kernel) ...
MAX_PARTIAL_OVERHEAD = 0.10
# ... and atomic reduction (each CTA's part is added into an L2-resident workspace, never read
# back from HBM; counted once). Looser, so that small shapes at M = 2-8 can split K into
# enough CTAs to fill the SMs (with the 0.10 rule Llama-3.2-1B's o at M = 8 got 64 CTAs); the
# L2 atomics are not free, so the tuner still times short against long chunks.
MAX_ATOMIC_OVERHEAD = 0.25


# (BLOCK_N, BLOCK_K, num_warps) tiles of the FMA path and of the dot path, most promising
# first (the pruner keeps the first ones when more than MAX_CANDIDATES fit): 2K-16K weight
# elements per iteration and CTA, rows of 128-1024 bytes.
_FMA_TILES = (
    (256, 32, 4),
    (256, 64, 8),
    (128, 64, 8),
    (256, 16, 4),
    (128, 32, 4),
    (512, 16, 8),
    (64, 64, 4),
    (256, 32, 8),
    (128, 16, 4),
    (64, 32, 4),
)
_DOT_TILES = (
    (128, 64, 4),
    (64, 64, 4),
    (256, 64, 8),
    (128, 32, 4),
    (128, 128, 8),
)
# 2-warp dot tiles, offered only to M buckets 4, 8 and 16: on the H100
# (benchmarks/config_sweep.py, results/config_sweep/, M = 8 with 57% of the channels kept)
# 128x16 over 128-channel chunks took Qwen2.5-7B q+k+v from 16.4 to 14.0 us and o from 12.6
# to 11.4 (cuBLAS 14.6 / 12.0), and 64x64 over 64-channel chunks Llama-3.2-1B q+k+v from 8.5
# to 7.9 (cuBLAS 7.6); at M = 4, 76% kept, 128x16 took Llama-3-8B o from 16.6 to 14.4 us
_DOT_TILES_2WARP = (
    (128, 16, 2),
    (64, 64, 2),
)
_CHUNKS_K = (256, 512, 1024, 2048)
# the dot path also gets short chunks: at M = 2-16 on 2k-4k wide shapes, chunks of >= 256
# channels left fewer CTAs than SMs (kernels.json of 2026-11-24: Llama-3.2-1B o, M = 8)
_DOT_CHUNKS_K = (64, 128) + _CHUNKS_K
# WIDE = 1 tiles (BLOCK_N, BLOCK_K, num_warps) and chunks: see the module docstring
_WIDE_TILES = (
    (256, 16, 1),
    (256, 32, 1),
    (512, 16, 2),
    (256, 8, 1),
)
_WIDE_CHUNKS_K = (64, 128, 256)
_FMA_STAGES = (1,)
_DOT_STAGES = (3,)
# Register caps (ptxas ``.maxnreg``) the tuner tries on the config it chose, when that is a
# wide FMA tile without one (``register_cap_variants``). A cap does more than bound
# registers: under it ptxas schedules the loop differently. H100, Llama-3-8B shapes, M = 1,
# same session (results/maxnreg_probe.json): caps of 96-128 took down 50% / 70% from 24.8 /
# 18.8 to 24.3-24.5 / 18.0 us, q+k+v 50% / 70% 13.4 / 10.5 -> 12.9-13.0 / 10.1-10.2, gate+up
# 70% 30.2 -> 29.0 (cap 96; 128 gave gate+up 96 registers and 34.7 us), while caps of 72-80
# spilled on down and o (254 registers uncapped) lost at every cap below 168. So: the two
# caps that won somewhere, timed against the uncapped pick, never assumed.
REGISTER_CAPS = (96, 128)
# ... and, for any config, the cap that lets one more CTA fit on an SM
# (``occupancy_step_cap``): register counts move with details as small as the kernel's
# parameter list (the output activation's two extra arguments took Llama-3-8B down's dot
# config at M = 8 from 72 to 78 registers, 6 CTAs per SM instead of 7, a second wave and 20%
# more time: kernel_notes section 15). H100 (sm_90) per SM: 65536 registers, at most 32 CTAs;
# registers are granted per warp in blocks of 256 (8 a thread).
SM_REGISTERS = 65536
SM_MAX_CTAS = 32
# How many of the fastest timed configs get the occupancy-step cap (the fastest wide one among
# them also REGISTER_CAPS; ``refinement_variants``): on Llama-3-8B down at M = 8, 50%, the
# config that ran 45.6 us before the extra arguments ranked second uncapped, so refining the
# fastest alone missed it.
CAPPED_CONFIGS = 3


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false")


def autotune_enabled() -> bool:
    """False when ``WAS_AUTOTUNE=0``: the kernel then runs the first-ranked candidate config
    of each key without timing any (quick correctness runs on a GPU; slower kernels)."""
    return os.environ.get("WAS_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off")


def m_bucket(m: int) -> int:
    """Bucket of the number of rows M of x: 1, 2, 4, 8 or 16 (next power of two).

    It is a tuning key and a compile-time constant (the FMA path's BLOCK_M), so that M = 3 and
    M = 4 share one compiled kernel and one tuning result."""
    if not 1 <= m <= MAX_M:
        raise ValueError(f"M must be in 1..{MAX_M}, got {m}")
    return 1 << (m - 1).bit_length()


def sparsity_bucket(sparsity: float | None) -> int:
    """Tuning-key bucket of the expected fraction of dropped input channels.

    0: unknown (tuned on whatever data the first call brings); 1: < 25%; 2: 25-50%;
    3: 50-75%; 4: >= 75%. The sparsity of a call is data dependent and never read back from the
    GPU (no sync), so it comes as a hint from the caller (the schedule's target sparsity)."""
    if sparsity is None:
        return 0
    s = float(sparsity)
    if not math.isfinite(s) or s < 0.0 or s > 1.0:
        raise ValueError(f"sparsity hint must be in [0, 1], got {sparsity!r}")
    return 1 + min(int(s * 4.0), 3)


def num_k_splits(k: int, config_kwargs: dict) -> int:
    """Number of K chunks (CTAs along the grid's second axis) a config uses for K."""
    chunk = config_kwargs["BLOCK_K"] * config_kwargs["K_ITERS"]
    return max(1, -(-k // chunk))


def _make(block_n, block_k, chunk, use_dot, compact, warps, stages, wide=0):
    kw = {
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "K_ITERS": chunk // block_k,
        "USE_DOT": use_dot,
        "COMPACT": compact,
    }
    if wide:  # only wide configs carry the key (a missing WIDE means 0)
        kw["WIDE"] = wide
    return triton.Config(kw, num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=4)
def _all_configs(interpret: bool) -> tuple:
    if interpret:
        # One small config under TRITON_INTERPRET=1 (autotuning would time every config on the
        # CPU): small enough that odd test shapes span several column tiles and K splits.
        return (_make(32, 32, 64, 0, 0, 4, 1),)
    out = []
    for compact in (0, 1):
        for block_n, block_k, warps in _WIDE_TILES:
            for chunk in _WIDE_CHUNKS_K:
                out.append(_make(block_n, block_k, chunk, 0, compact, warps, 1, wide=1))
    for compact in (0, 1):
        for block_n, block_k, warps in _FMA_TILES:
            for chunk in _CHUNKS_K:
                for stages in _FMA_STAGES:
                    out.append(_make(block_n, block_k, chunk, 0, compact, warps, stages))
        for block_n, block_k, warps in _DOT_TILES + _DOT_TILES_2WARP:
            for chunk in _DOT_CHUNKS_K:
                if chunk < block_k:
                    continue
                for stages in _DOT_STAGES:
                    out.append(_make(block_n, block_k, chunk, 1, compact, warps, stages))
    return tuple(out)


def get_autotune_configs(interpret: bool | None = None) -> list:
    """The autotune config list (a single small config under the Triton interpreter)."""
    interpret = interpret_mode() if interpret is None else interpret
    return list(_all_configs(interpret))


@functools.lru_cache(maxsize=1)
def _sm_count() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(
                torch.cuda.current_device()
            ).multi_processor_count
    except Exception:  # pragma: no cover - no device / driver trouble: fall back to H100
        pass
    return DEFAULT_SM_COUNT


def _fits_registers(kw: dict, warps: int, block_m: int) -> bool:
    """FMA path: the fp32 accumulators [BLOCK_M x BLOCK_K, BLOCK_N] must fit ~64 registers per
    thread (plus the weight tile), or occupancy and bytes in flight collapse. COMPACT: the
    union mask of the chunk is built from M rows x CHUNK entries of x held in registers."""
    threads = 32 * warps
    if kw.get("WIDE", 0):  # [BLOCK_N] accumulators; x of BLOCK_K rows (and the next step's)
        if block_m > 4 or block_m * kw["BLOCK_K"] > 32:
            return False
    elif not kw["USE_DOT"] and block_m * kw["BLOCK_K"] * kw["BLOCK_N"] > 64 * threads:
        return False
    if kw.get("COMPACT", 0) and block_m * kw["BLOCK_K"] * kw["K_ITERS"] > 32 * threads:
        return False
    return True


def column_tiles(segment_ends: tuple, block_n: int) -> int:
    """Column tiles of the grid: each segment is tiled on its own (a tile never mixes two
    segments' thresholds), so every segment may end with a partial tile."""
    tiles, start = 0, 0
    for end in segment_ends:
        tiles += -(-(end - start) // block_n)
        start = end
    return tiles


def _two_warp_dot(cfg) -> bool:
    """One of ``_DOT_TILES_2WARP`` (dot tiles of fewer than 4 warps)."""
    return bool(cfg.kwargs["USE_DOT"]) and cfg.num_warps < 4


def _runs_bucket(cfg, mb: int) -> bool:
    """Whether a config may run M bucket mb: M >= 5 needs the dot path (BLOCK_K >= 16), M = 1
    the FMA paths, and of the FMA tiles M <= 2 runs only the wide ones (they won every M = 1,
    2 shape on the H100, tile_probe*.json); the 2-warp dot tiles run M >= 3 only (at M = 2
    the dot path lost to the wide tiles by 16-25%, config_sweep/llama8b_m2_dot.json); and
    the FMA path's registers must fit."""
    kw = cfg.kwargs
    use_dot, wide = kw["USE_DOT"], kw.get("WIDE", 0)
    if mb >= 8 and (not use_dot or kw["BLOCK_K"] < 16):
        return False
    if mb < 4 and _two_warp_dot(cfg):
        return False
    if mb == 1 and use_dot:
        return False
    if mb <= 2 and not use_dot and not wide:
        return False
    return _fits_registers(kw, cfg.num_warps, mb)


@functools.lru_cache(maxsize=4096)
def _prune_cached(
    configs: tuple,
    segment_ends: tuple,
    k: int,
    mb: int,
    sb: int,
    elem: int,
    sms: int,
    atomic: bool = True,
) -> tuple:
    """The candidates: the best MAX_CANDIDATES with few K splits (the split-K partials written
    and read back stay under 10% of the weight bytes; the only family for the ordered
    reduction), then, for the atomic reduction, those of the best MAX_CANDIDATES with up to
    25% of atomics into L2 (short chunks: small shapes, M = 2-8) not already listed.

    Two families rather than one longer ranking: with the atomic bound alone, the short-chunk
    configs took the places of the long-chunk ones that had won on the H100 (M = 4-8 on
    Llama-3-8B's q+k+v and o: up to 18% slower, kernels.json runs of 2026-11-24)."""
    few = _ranked(configs, segment_ends, k, mb, sb, elem, sms, many_splits=False)
    if not atomic:
        return few
    many = _ranked(configs, segment_ends, k, mb, sb, elem, sms, many_splits=True)
    return few + tuple(c for c in many if c not in few)


def _round_robin(scored: list) -> tuple[list, dict]:
    """Scored entries (sorted) in turn order: every tile's best split-K first, then every
    tile's second best, so the candidates differ in tile shape and in split-K rather than
    repeating one of them; the variants (masked / compacting, default / wide FMA tiles)
    alternate, so each is timed. Returns the merged list of (outside, rank in tile, distance,
    index, config) and those entries per variant."""
    rank_in_tile: dict = {}
    by_variant: dict = {}
    for entry in scored:
        r = rank_in_tile.get(entry[3], 0)
        rank_in_tile[entry[3]] = r + 1
        by_variant.setdefault(entry[3][3], []).append((entry[0], r, entry[1], entry[2], entry[4]))
    for lst in by_variant.values():
        lst.sort(key=lambda t: t[:4])
    merged = []
    for i in range(max((len(v) for v in by_variant.values()), default=0)):
        merged += [v[i] for v in by_variant.values() if i < len(v)]
    merged.sort(key=lambda t: t[0])  # stable: in-range CTA counts first
    return merged, by_variant


def _ranked(configs: tuple, segment_ends: tuple, k: int, mb: int, sb: int, elem: int,
            sms: int, many_splits: bool) -> tuple:  # fmt: skip
    """One family of candidates (see ``_prune_cached``), most promising first."""
    if len(configs) <= 1:
        return configs
    n = segment_ends[-1]
    # configs that can run this M bucket at all: the path (FMA / dot / wide), the registers
    runnable = [c for c in configs if _runs_bucket(c, mb)]
    if not runnable:
        raise ValueError(f"no sparse GEMV config runs M bucket {mb}")
    min_chunk = min(c.kwargs["BLOCK_K"] * c.kwargs["K_ITERS"] for c in runnable)
    lo, hi, target = 4 * sms, 64 * sms, 24 * sms  # warps launched (see the module docstring)
    scored = []
    for cfg in runnable:
        kw = cfg.kwargs
        use_dot = kw["USE_DOT"]
        compact = kw.get("COMPACT", 0)
        if compact and sb in (1, 2):  # < 50% dropped: masked rows cost little, skip the scan
            continue
        chunk = kw["BLOCK_K"] * kw["K_ITERS"]
        if chunk > k and chunk > min_chunk:  # longer chunks than K only repeat the shortest
            continue
        if kw["BLOCK_N"] > max(64, triton.next_power_of_2(n)):
            continue
        if use_dot and chunk < _CHUNKS_K[0] and not many_splits:
            continue
        splits = num_k_splits(k, kw)
        # split-K traffic relative to the dense weight bytes: fp32 parts added into the L2
        # workspace (atomic), or written and read back (ordered)
        passes, cap = (1, MAX_ATOMIC_OVERHEAD) if many_splits else (2, MAX_PARTIAL_OVERHEAD)
        overhead = (splits * mb * 4 * passes) / max(1, k * elem)
        if splits > 1 and overhead > cap:
            continue
        warps = column_tiles(segment_ends, kw["BLOCK_N"]) * splits * cfg.num_warps
        outside = 0 if lo <= warps <= hi else 1
        # variants that take turns among the candidates: (compacting, wide)
        variant = (compact, kw.get("WIDE", 0))
        tile = (kw["BLOCK_N"], kw["BLOCK_K"], use_dot, variant, cfg.num_warps, cfg.num_stages)
        scored.append((outside, abs(math.log2(warps / target)), len(scored), tile, cfg))
    if not scored:  # nothing fits the rules: keep the smallest tile that runs this bucket
        return (min(runnable, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]),)
    scored.sort(key=lambda t: t[:3])
    # (the 2-warp dot tiles only join at the end, so they take no place from the others)
    merged, by_variant = _round_robin([t for t in scored if not _two_warp_dot(t[4])])
    # ... but every variant keeps its best MIN_PER_VARIANT: on small shapes at M = 2-8 the
    # 1-warp wide CTAs launch fewer than 4 warps per SM and would all rank behind the dot
    # path's 4-warp tiles, never to be timed (they beat the dot path at M = 1-2).
    picked = []
    for lst in by_variant.values() if many_splits else ():
        picked += [t for t in merged if t in lst[:MIN_PER_VARIANT]]
    picked += [t for t in merged if t not in picked]
    picked = sorted(picked[:MAX_CANDIDATES], key=merged.index)
    if many_splits and mb >= 4:
        # the dot path at M >= 3: time went up to 2x from one split count to the next on the
        # same tile (config_sweep/qwen_m8.json: Qwen2.5-7B q+k+v, 128x32 tiles, 14.4 us over
        # 256-channel chunks, 18.7 over 128), and the winner was often a tile's second choice
        # by CTA count or a masked tile the round robin had left out (M = 4, 76% kept,
        # Llama-3-8B gate+up: 128x32 over 1024-channel chunks 66.8 us, the tuned pick 85.2):
        # every masked dot tile's two best split counts are timed too
        done = {id(t[4]) for t in picked}
        picked += [t for t in _round_robin(scored)[0] if t[1] < 2 and id(t[4]) not in done
                   and not t[4].kwargs.get("COMPACT", 0)]  # fmt: skip
    return tuple(t[4] for t in picked)


def candidate_configs(
    segment_ends: tuple, k: int, mb: int, sb: int, elem_size: int, atomic: bool = True
) -> list:
    """The configs the autotuner will consider for this shape (same rules as the pruner);
    ``atomic``: the split-K reduction the calls will use (it bounds the split count)."""
    configs = _all_configs(interpret_mode())
    if len(configs) <= 1:
        return list(configs)
    ends = tuple(segment_ends)
    return list(_prune_cached(configs, ends, k, mb, sb, elem_size, _sm_count(), atomic))


def occupancy_step_cap(n_regs: int | None, num_warps: int) -> int | None:
    """The largest register count (a multiple of 8) at which one more CTA of ``num_warps``
    warps fits on an SM than at ``n_regs``; None if the CTA-count limit already binds, the
    count is unknown, or the cap would be below 40 registers (spills in any loop)."""
    if not n_regs:
        return None
    per_warp = -(-n_regs // 8) * 8 * 32
    ctas = min(SM_MAX_CTAS, SM_REGISTERS // (per_warp * num_warps))
    if ctas >= SM_MAX_CTAS:
        return None
    cap = SM_REGISTERS // ((ctas + 1) * 32 * num_warps) // 8 * 8
    return min(cap, 255) if cap >= 40 else None


def register_cap_variants(config: dict, n_regs: int | None = None,
                          fixed_caps: bool = True) -> list[dict]:  # fmt: skip
    """A timed config under the register caps the tuner times against it: each of
    ``REGISTER_CAPS`` for wide FMA tiles (``fixed_caps``), and for any config the occupancy
    step below its ``n_regs`` (the registers its compiled kernel uses). An empty list for a
    config that already has a cap."""
    if config.get("maxnreg"):
        return []
    caps = list(REGISTER_CAPS) if fixed_caps and config.get("WIDE", 0) else []
    step = occupancy_step_cap(n_regs, int(config.get("num_warps", 4)))
    if step is not None and step not in caps:
        caps.append(step)
    return [{**config, "maxnreg": cap} for cap in caps]


def refinement_variants(ranked: list[dict], n_regs: Callable[[dict], int | None]) -> list[dict]:
    """The capped variants the tuner times after its candidates (``ranked``: the timed
    configs, fastest first; ``n_regs(config)``: its compiled register count): each of the
    ``CAPPED_CONFIGS`` fastest under its occupancy-step cap, and the fastest wide config among
    them also under ``REGISTER_CAPS``. (The fixed caps once went to the fastest config only:
    when a dot config won, the wide config whose 128-register variant had run Llama-3-8B
    gate+up at M = 4, 90% in 42.3 us was timed only under its occupancy cap, 52.6 us.)"""
    top = ranked[:CAPPED_CONFIGS]
    first_wide = next((i for i, c in enumerate(top) if c.get("WIDE", 0)), None)
    out: list[dict] = []
    for i, c in enumerate(top):
        out += register_cap_variants(c, n_regs(c), fixed_caps=i == first_wide)
    return out
