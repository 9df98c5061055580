"""Split-K reduction of the sparse GEMV: how the CTAs that share a column tile sum their parts.

Two ways, both with fp32 accumulation and no fp16/bf16 atomics (precision; bf16 atomics are
missing on several targets and in the interpreter):

* ``atomic`` (default): each CTA adds its fp32 partial [M, BLOCK_N] into a zeroed fp32
  workspace [M, N] with relaxed fp32 atomics, then draws a ticket from its column tile's
  counter (acquire-release). The CTA that draws the last ticket reads the tile's sum from L2,
  zeroes it, adds the bias, writes y in x's dtype and resets the counter:
  the workspace is left zeroed for the next call, so one buffer per device serves every call
  with no memset and no second kernel. The summation order varies run to run (fp32 rounding
  only). On a GPU the buffer must be reserved beforehand (``reserve_workspace``; the backend
  does it at compile time): allocating it inside a call could land in a CUDA-graph pool (the
  warm-up runs of ``mode="reduce-overhead"`` allocate from the graph's pool, whose blocks the
  graph tree may hand out again), so a call that finds it missing or too small uses
  ``ordered``. The interpreter (CPU) reserves on first use. Calls that share a device must
  not run concurrently on two streams (they share the buffer).
* ``ordered`` (``WAS_SPLITK_REDUCTION=ordered``): each CTA writes its partial to a workspace
  [splits, M, N] and a second small kernel (``_splitk_reduce_kernel``) sums the splits in a
  fixed order (bitwise reproducible run to run), adds the bias and casts. The split count
  depends on the autotuned config, which the host does not know when it launches the
  reduction: the GEMV writes it to a one-int device buffer that this kernel reads.

History: a fused reduction where the last-ticket CTA summed every split's partial was timed
against ``ordered`` with the old flush protocol (every call after a 256 MB memset) and
measured no faster (``benchmarks/results/tile_probe4.json``); the decode profile later showed
the separate reductions costing 2.6 us each, 330 us per Llama-3-8B step
(``decode_profile.json``), which is why the atomic form was built. Measured in one session on
the H100 (``benchmarks/results/splitk_ab/``): 1.5-3 us less per call at Llama-3-8B shapes and
Llama-3-8B decode at 50% 1.58x -> 1.68x dense (kernel_notes section 10).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = [
    "_splitk_reduce_kernel",
    "_atomic_splitk_epilogue",
    "reduction_mode",
    "reserve_workspace",
    "atomic_workspace",
]

REDUCTION_MODES = ("atomic", "ordered")

# device -> (fp32 accumulator, int32 tickets), both all-zero between calls
_WORKSPACES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
# buffers replaced by larger ones: a CUDA graph captured earlier may still point at them
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []


def reduction_mode() -> str:
    """``WAS_SPLITK_REDUCTION``: ``atomic`` (default) or ``ordered`` (bitwise reproducible)."""
    mode = os.environ.get("WAS_SPLITK_REDUCTION", "atomic").strip().lower() or "atomic"
    if mode not in REDUCTION_MODES:
        raise ValueError(
            f"WAS_SPLITK_REDUCTION={mode!r} is not one of {REDUCTION_MODES}: 'atomic' sums "
            "split-K parts with fp32 atomics in one kernel, 'ordered' in a fixed order with a "
            "second kernel (bitwise reproducible)"
        )
    return mode


def _reserved(device: torch.device, acc_elems: int, tickets: int):
    """The device's workspace if it holds ``acc_elems`` values and ``tickets`` counters."""
    cur = _WORKSPACES.get(device)
    if cur is not None and cur[0].numel() >= acc_elems and cur[1].numel() >= tickets:
        return cur
    return None


def reserve_workspace(device: torch.device, acc_elems: int, tickets: int) -> None:
    """Make the zeroed atomic-reduction workspace of ``device`` hold at least ``acc_elems``
    fp32 values (M x N of the largest call) and ``tickets`` counters (column tiles). Allocates
    (torch.zeros): call it outside CUDA-graph capture and outside torch.compile's warm-up runs.
    Buffers it replaces are kept alive, since graphs captured earlier still use them."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "was: the split-K workspace cannot be reserved during CUDA-graph capture; reserve "
            "it before capturing (was_compile.kernels.ops.reserve_decode_workspace)"
        )
    if _reserved(device, acc_elems, tickets) is not None:
        return
    cur = _WORKSPACES.get(device)
    if cur is not None:
        _RETIRED.append(cur)
        acc_elems, tickets = max(acc_elems, cur[0].numel()), max(tickets, cur[1].numel())
    _WORKSPACES[device] = (
        torch.zeros(acc_elems, dtype=torch.float32, device=device),
        torch.zeros(tickets, dtype=torch.int32, device=device),
    )


def atomic_workspace(device: torch.device, acc_elems: int, tickets: int):
    """The device's zeroed (fp32 accumulator, int32 tickets) if reserved large enough, else
    None on a GPU (the caller then reduces ``ordered``); on the CPU (interpreter) it is
    reserved here."""
    cur = _reserved(device, acc_elems, tickets)
    if cur is not None or device.type == "cuda":
        return cur
    reserve_workspace(device, acc_elems, tickets)
    return _WORKSPACES[device]


@triton.jit
def _round_out(acc, y_ptr, INTERPRET: tl.constexpr):
    """acc (fp32) in y's dtype, rounded to nearest even as the GPU does (the interpreter
    truncates fp32 -> bf16, so it is rounded by hand there)."""
    if INTERPRET and y_ptr.dtype.element_ty == tl.bfloat16:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = acc.to(y_ptr.dtype.element_ty)
    return out


@triton.jit
def _splitk_reduce_kernel(part_ptr, nsplit_ptr, bias_ptr, y_ptr, MN, N,
                          HAS_BIAS: tl.constexpr, MAX_SPLIT: tl.constexpr, BLOCK: tl.constexpr,
                          INTERPRET: tl.constexpr):  # fmt: skip
    """y[m, n] = cast(sum_s part[s, m, n] + bias[n]); fixed order, fp32."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    nsplit = tl.load(nsplit_ptr)
    s = tl.arange(0, MAX_SPLIT)
    vals = tl.load(
        part_ptr + s[:, None] * MN + offs[None, :],
        mask=(s[:, None] < nsplit) & mask[None, :],
        other=0.0,
    )
    acc = tl.sum(vals, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, _round_out(acc, y_ptr, INTERPRET), mask=mask)


@triton.jit
def _activation(v, ACT: tl.constexpr):
    """act(v) in fp32; ACT: ``output_activation.ACTIVATIONS`` code (1 silu, 2 gelu tanh form,
    3 gelu erf form, 4 relu)."""
    if ACT == 1:
        out = v * tl.sigmoid(v)
    elif ACT == 2:  # 0.5 (1 + tanh(z)) = sigmoid(2 z)
        out = v * tl.sigmoid(1.5957691216057308 * (v + 0.044715 * v * v * v))
    elif ACT == 3:
        out = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
    else:
        out = tl.maximum(v, 0.0)
    return out


@triton.jit
def _atomic_splitk_epilogue(part, offs_m, offs_n, n_mask, M, N, ws_ptr, ticket_ptr, bias_ptr,
                            y_ptr, h_ptr, HALF, HAS_BIAS: tl.constexpr, INTERPRET: tl.constexpr,
                            ACT: tl.constexpr = 0, GATED: tl.constexpr = 0,
                            GATE_FIRST: tl.constexpr = 1):  # fmt: skip
    """``atomic`` reduction, run by every CTA after its loop: part [rows, BLOCK_N] fp32 is this
    CTA's share of y[offs_m, offs_n]; the last of the tile's CTAs writes y and re-zeroes.

    ACT (``output_activation.py``): that CTA also writes h [M, N] = act(y) (not GATED) or, for a
    gate|up group of two segments of HALF columns each, h [M, HALF] = act(gate) * up: column
    tiles t and t + tiles / 2 hold the same columns of gate and up, and of the two CTAs that
    finish them the second (a per-pair ticket after the column tickets) reads the first's y
    back from L2 and writes h for those columns."""
    idx = offs_m[:, None] * N + offs_n[None, :]
    mask = (offs_m[:, None] < M) & n_mask[None, :]
    nsplit = tl.num_programs(1)
    final = nsplit > 0  # this CTA writes the tile (a scalar True until tickets say otherwise)
    if nsplit > 1:
        tl.atomic_add(ws_ptr + idx, part, mask=mask, sem="relaxed")
        tl.debug_barrier()  # every thread's adds precede the release of the ticket below
        ticket = tl.atomic_add(ticket_ptr + tl.program_id(0), 1, sem="acq_rel")
        final = ticket == nsplit - 1
        # (broadcast through idx: in the interpreter a scalar mask ANDed in comes out int32)
        mask = mask & ((idx * 0 + ticket) == nsplit - 1)
        # the last CTA reads the tile's sum from L2 (.cg: not through the SM's L1, which is
        # not coherent with the other SMs' atomics) and leaves zeros behind
        part = tl.load(ws_ptr + idx, mask=mask, other=0.0, cache_modifier=".cg")
        # Triton may give the zeroing store another thread layout than the load: without this
        # barrier a thread could zero an element before the thread that loads it has read it
        # (seen on the H100: 2-warp tiles, first call after tuning, 78% error)
        tl.debug_barrier()
        tl.store(ws_ptr + idx, tl.zeros_like(part), mask=mask)
        tl.store(ticket_ptr + tl.program_id(0), 0, mask=ticket == nsplit - 1)
    if HAS_BIAS:
        part += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y = _round_out(part, y_ptr, INTERPRET)
    tl.store(y_ptr + idx, y, mask=mask)
    if ACT != 0:
        y = y.to(tl.float32)  # act reads the rounded output, as a separate kernel would
        if GATED:
            tiles = tl.num_programs(0) // 2
            second = tl.program_id(0) >= tiles
            pair_ptr = ticket_ptr + 2 * tiles + tl.program_id(0) - tiles * second
            tl.debug_barrier()  # every thread's y stores precede the release of the pair ticket
            arrived = tl.atomic_add(pair_ptr, 1, sem="acq_rel", mask=final)
            last = final & (arrived == 1)
            mask = mask & ((idx * 0 + last.to(tl.int32)) == 1)
            shift = tl.where(second, -HALF, HALF)  # from this tile's columns to its partner's
            other = tl.load(y_ptr + idx + shift, mask=mask, other=0.0, cache_modifier=".cg")
            other = other.to(tl.float32)
            own_gate = second != GATE_FIRST  # gate first: the first half's tiles hold the gate
            gate = tl.where(own_gate, y, other)
            up = tl.where(own_gate, other, y)
            cols = offs_n - tl.where(second, HALF, 0)
            h = _round_out(_activation(gate, ACT) * up, h_ptr, INTERPRET)
            tl.store(h_ptr + offs_m[:, None] * HALF + cols[None, :], h, mask=mask)
            tl.store(pair_ptr, 0, mask=last)
        else:
            tl.store(h_ptr + idx, _round_out(_activation(y, ACT), h_ptr, INTERPRET), mask=mask)
