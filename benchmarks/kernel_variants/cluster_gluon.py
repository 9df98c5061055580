"""Kernel variant (kernel_notes section 21): the M = 1 sparse GEMV whose split-K sum stays
inside a thread-block cluster, through distributed shared memory, written in Gluon.

One cluster of C CTAs (``num_ctas = C``: Triton launches C x tiles CTAs with a cluster
dimension of C, and ``program_id`` is the cluster's index) per 256-column tile; the C CTAs
and their W warps split the tile's K rows, C x W ways (warp w of CTA r reads rows
[(r W + w) K / (C W), ...)); every lane owns 8 contiguous columns of each row (16-byte
loads), as in ``warpk_gluon.py``. At the end each warp writes its partial row into its
CTA's shared memory and the CTA sums them; warp 0 stores the CTA's row into its slot of
CTA 0's buffer over the SM-to-SM network (plain ``st.shared::cluster``; fp32 atomic adds
there compile to compare-and-swap loops and ran 2-50x slower); the cluster barrier orders
the stores, and CTA 0 sums the C rows in a fixed order and writes y. So the L2 sees no
atomics, no ticket and no read-back, and the sum is the same run to run.

Gluon gives no handle on distributed shared memory in Triton 3.6, so the cluster part is
inline PTX: the buffer [W + C rows, rounded up to a power of 2, 256] fp32 is Gluon's only
shared-memory allocation (offset 0 of ``global_smem``), and the stores, barriers and
read-backs of the reduction are one ``asm`` block per thread, so nothing can move across the
barriers. Probe code (``benchmarks/warpk_probe.py``): M = 1, up to 3 segments whose ends are
multiples of 256, K a multiple of C x W x BLOCK_K, C in {2, 4, 8, 16}. Gluon kernels do not
run in the interpreter.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kernel_variants.warpk_gluon import _stream_rows  # the K loop, shared


@gluon.constexpr_function
def _tile_layout(ctas, warps, block_k, vec):
    """[W, BLOCK_K, 32 VEC]: warp w holds its rows of the step, a lane VEC contiguous columns;
    replicated across the cluster (every CTA holds the whole tensor, nothing is split)."""
    cga = [[0, 0, 0] for _ in range(int(ctas).bit_length() - 1)]
    return gl.BlockedLayout(
        [1, int(block_k), int(vec)], [1, 1, 32], [int(warps), 1, 1], [2, 1, 0], cga
    )


@gluon.constexpr_function
def _slots_layout(ctas, warps, vec):
    """[rows, 32 VEC] registers: a lane VEC columns of every row, warps over the rows."""
    cga = [[0, 0] for _ in range(int(ctas).bit_length() - 1)]
    return gl.BlockedLayout([1, int(vec)], [1, 32], [int(warps), 1], [1, 0], cga)


@gluon.constexpr_function
def _rows(ctas, warps):
    """Rows of the shared buffer: W warp rows, then C CTA rows (a power of 2)."""
    return 1 << (int(ctas) + int(warps) - 1).bit_length()


@gluon.constexpr_function
def _buffer_layout(ctas):
    cga = [[0, 0] for _ in range(int(ctas).bit_length() - 1)]
    return gl.SwizzledSharedLayout(1, 1, 1, [1, 0], cga)


@gluon.constexpr_function
def _constraints(outs, out_kind, ins):
    """Constraint string of an asm block with ``outs`` outputs of kind ``out_kind`` ("r" or
    "f") and the input kinds ``ins``, each given ``outs`` times (one a packed element)."""
    n = int(outs)
    return ",".join([f"={out_kind}"] * n + [k for k in ins for _ in range(n)])


@gluon.constexpr_function
def _arrive_asm(vec):
    """Per thread (one instance: pack VEC over its VEC columns): arrive on the cluster
    barrier, phase 0 (every CTA of the cluster has started; nothing to order yet)."""
    return "barrier.cluster.arrive.relaxed.aligned;\n" + "\n".join(
        f"mov.u32 ${i}, 0;" for i in range(int(vec))
    )


@gluon.constexpr_function
def _reduce_asm(ctas, warps, vec):
    """Per thread (VEC columns), in shared memory [W + C (rounded), 32 VEC] fp32: store its
    partial sums in its warp's row; CTA barrier; sum the warp rows (fixed order); wait for
    cluster phase 0; warp 0 stores the CTA's sums into row W + rank of CTA 0 (plain stores
    over the SM-to-SM network); arrive and wait for phase 1 (every CTA's row written); sum
    rows W .. W + C - 1 of the local buffer, in order (on CTA 0: the tile's sums).
    Operands (v = VEC): $0.. sums out, $v.. partials, $2v the byte offset of the thread's
    first column, $3v its warp, $4v its CTA rank."""
    ctas, warps, v = int(ctas), int(warps), int(vec)
    row_bytes = 32 * v * 4
    quads = v // 4  # 16-byte vectors a thread moves per row

    def vecs(name: str) -> list:
        return [", ".join(f"{name}{4 * q + i}" for i in range(4)) for q in range(quads)]

    def add_rows(first: int, count: int, into: str) -> list:
        out = []
        for row in range(first, first + count):
            dst = into if row == first else "t"
            for q, regs in enumerate(vecs(dst)):
                out.append(f"ld.shared.v4.f32 {{{regs}}}, [a+{row * row_bytes + 16 * q}];")
            if row != first:
                out += [f"add.f32 {into}{i}, {into}{i}, t{i};" for i in range(v)]
        return out

    partials = [", ".join(f"${v + 4 * q + i}" for i in range(4)) for q in range(quads)]
    lines = [
        "{",
        ".reg .u32 a, r;",
        ".reg .pred q;",
        f".reg .f32 t<{v}>, c<{v}>, o<{v}>;",
        "mov.u32 a, global_smem;",
        f"add.u32 a, a, ${2 * v};",
        f"mad.lo.u32 r, ${3 * v}, {row_bytes}, a;",
    ]
    lines += [f"st.shared.v4.f32 [r+{16 * q}], {{{regs}}};" for q, regs in enumerate(partials)]
    lines.append("bar.sync 0;")
    lines += add_rows(0, warps, "c")
    lines += [
        "barrier.cluster.wait.aligned;",
        f"mad.lo.u32 r, ${4 * v}, {row_bytes}, a;",
        f"add.u32 r, r, {warps * row_bytes};",
        "mapa.shared::cluster.u32 r, r, 0;",
        f"setp.eq.u32 q, ${3 * v}, 0;",
    ]
    lines += [
        f"@q st.shared::cluster.v4.f32 [r+{16 * q}], {{{regs}}};"
        for q, regs in enumerate(vecs("c"))
    ]
    lines += ["barrier.cluster.arrive.release.aligned;", "barrier.cluster.wait.acquire.aligned;"]
    lines += add_rows(warps, ctas, "o")
    lines += [f"mov.f32 ${i}, o{i};" for i in range(v)]
    lines.append("}")
    return "\n".join(lines)


@gluon.jit
def _cluster_gemv_kernel(x_ptr, w_ptr, thr_ptr, y_ptr, N, K, E0, E1, stride_thr,
                         C: gl.constexpr, W: gl.constexpr, BLOCK_K: gl.constexpr,
                         STEPS: gl.constexpr, VEC: gl.constexpr,
                         REDUCE: gl.constexpr = 1):  # fmt: skip
    """y[n0:n0 + 32 VEC] for the cluster's column tile; thresholds row 0 for columns < E0, 1
    for [E0, E1), 2 after. REDUCE = 0 (a timing bound, wrong output): no reduction, every
    CTA's warp 0 stores its own partial sums into y."""
    TILE: gl.constexpr = 32 * VEC
    L3: gl.constexpr = _tile_layout(C, W, BLOCK_K, VEC)
    LX: gl.constexpr = gl.SliceLayout(2, L3)  # [W, BLOCK_K]
    LACC: gl.constexpr = gl.SliceLayout(1, L3)  # [W, TILE]: VEC contiguous columns a lane
    LN: gl.constexpr = gl.SliceLayout(0, LACC)
    LWARP: gl.constexpr = gl.SliceLayout(1, LACC)
    # the rows (Gluon's only shared memory, at offset 0 of global_smem), zeroed here so that
    # Gluon allocates them; the asm blocks address them through global_smem
    buf = gl.allocate_shared_memory(
        gl.float32, [_rows(C, W), TILE], _buffer_layout(C),
        gl.zeros([_rows(C, W), TILE], gl.float32, _slots_layout(C, W, VEC)),
    )  # fmt: skip

    n0 = gl.program_id(0) * TILE
    seg = (n0 >= E0).to(gl.int32) + (n0 >= E1).to(gl.int32)
    thr_row = thr_ptr + seg * stride_thr
    col = gl.arange(0, TILE, layout=LN)
    lanes = gl.zeros([W, TILE], gl.int32, LACC) + gl.expand_dims(col, 0)  # [W, TILE]
    # one asm instance a thread (pack VEC over its VEC columns, the first's offset used)
    if REDUCE:
        dummy = gl.inline_asm_elementwise(_arrive_asm(VEC), _constraints(VEC, "r", "r"),
                                          [lanes], dtype=gl.int32, is_pure=False,
                                          pack=VEC)  # fmt: skip
    else:
        dummy = lanes * 0
    rank = gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r,r", [lanes],
                                     dtype=gl.int32, is_pure=True, pack=1)  # fmt: skip
    cols3 = gl.expand_dims(gl.expand_dims(n0 + col, 0), 1)
    warp = gl.arange(0, W, layout=gl.SliceLayout(1, LX))
    rank_x = gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r,r", [warp],
                                       dtype=gl.int32, is_pure=True, pack=1)  # fmt: skip
    j = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LX))
    first = (rank_x * W + warp) * (STEPS * BLOCK_K)
    rows = gl.expand_dims(first, 1) + gl.expand_dims(j, 0)  # [W, BLOCK_K]

    acc = _stream_rows(x_ptr, w_ptr, thr_row, rows, cols3, gl.zeros([W, TILE], gl.float32, LACC),
                       N, K, BLOCK_K, STEPS)  # fmt: skip
    acc = acc + dummy.to(gl.float32)  # orders the arrive before the reduction asm
    warp_of = gl.zeros([W, TILE], gl.int32, LACC) + gl.expand_dims(gl.arange(0, W, layout=LWARP), 1)
    if REDUCE:
        total = gl.inline_asm_elementwise(_reduce_asm(C, W, VEC),
                                          _constraints(VEC, "f", "frrr"),
                                          [acc, lanes * 4, warp_of, rank], dtype=gl.float32,
                                          is_pure=False, pack=VEC)  # fmt: skip
        leader = (gl.expand_dims(gl.arange(0, W, layout=LWARP), 1) == 0) & (rank == 0)
    else:
        total = acc
        leader = (gl.expand_dims(gl.arange(0, W, layout=LWARP), 1) == 0) & (rank >= 0)
    gl.store(y_ptr + gl.expand_dims(n0 + col, 0) + lanes * 0,
             total.to(y_ptr.dtype.element_ty), mask=leader)  # fmt: skip
    buf._keep_alive()


def cluster_gemv(x: torch.Tensor, weight_t: torch.Tensor, thresholds: torch.Tensor,
                 segment_ends, ctas: int = 8, warps: int = 4, block_k: int = 8,
                 maxnreg: int | None = None, cols: int = 256,
                 reduce: bool = True) -> torch.Tensor:  # fmt: skip
    """y [1, N] = where(|x| > thresholds[seg], x, 0) @ weight_t; column tiles of ``cols``
    (256: 8 a lane, 16-byte loads; 128: 4 a lane, 8-byte loads); see the module docstring."""
    k, n = weight_t.shape
    ends = tuple(segment_ends)
    if (x.shape[0] != 1 or len(ends) > 3 or cols not in (128, 256) or any(e % cols for e in ends)
            or k % (ctas * warps * block_k) or ctas not in (2, 4, 8, 16)):  # fmt: skip
        raise ValueError(f"cluster_gemv: M = 1, at most 3 segments of multiples of {cols} "
                         f"(128 or 256), K a multiple of {ctas * warps * block_k}, 2-16 CTAs "
                         "a cluster")  # fmt: skip
    e = list(ends) + [n] * (3 - len(ends))
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    thr = thresholds.contiguous()
    _cluster_gemv_kernel[(n // cols,)](
        x, weight_t, thr, y, n, k, e[0], e[1], thr.stride(0) if thr.shape[0] > 1 else 0,
        C=ctas, W=warps, BLOCK_K=block_k, STEPS=k // (ctas * warps * block_k), VEC=cols // 32,
        REDUCE=int(reduce),
        num_warps=warps, num_ctas=ctas, **({"maxnreg": maxnreg} if maxnreg else {}),
    )  # fmt: skip
    return y
