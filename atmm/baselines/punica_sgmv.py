"""Punica-style SGMV baseline: ``y[seg] += c * (x[seg] @ A_s^T) @ B_s`` per segment and slice.

Follows Punica's ``add_lora_sgmv_custom_cutlass`` (punica-ai/punica, MLSys'24): the segment table
as given (one problem per segment), two separate launches with fixed tiles and no per-shape tuning.

* Shrink, after Punica's FlashInfer-style ``sgmv_shrink``: the long K dimension is split into
  256-wide chunks over programs (grid: K chunk x slice, M tile of 32 rows, segment); each chunk's
  fp32 partial sum goes to a scratch buffer and a second small kernel adds the chunks and rounds
  to the input dtype. Like Punica, the split is decided per call from host metadata: Punica drops
  it when the split grid exceeds its cooperative-launch limit; Triton has no such limit, so here
  it is dropped (one chunk = all of K, written directly, no scratch traffic) only when the
  unsplit grid alone already has a program for every SM.
* Expand, after Punica's CUTLASS grouped GEMM: its fixed threadblock tile, BLOCK_M=32 x
  BLOCK_N=128 stepping over the rank 16 at a time (grid: column tile, M tile, segment); the
  result is added to ``y`` in fp32 and rounded once.
* The intermediate ``v = x @ A^T`` is kept in the input dtype (fp16/bf16) between the two launches,
  as Punica does; accumulation inside each kernel is fp32.

Punica compiles one kernel per rank and takes one rank per call; here the tile's rank bound is the
pool's max_rank (rounded up to a power of two) and every load is masked by the slot's own rank, so
rows past ``ranks[slot]`` are never read. All slices of a stacked pool (qkv, gate_up) share one
launch: a slice index rides in a grid dimension (shrink) or in a per-tile table (expand).

Limits: launch grids come from host metadata only (segments, ``max_seg_len``, shapes): programs
of empty or slot -1 segments, and M tiles past a segment's end, exit at once. At most 65535
segments and 65535 M tiles per call (grid limits).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from atmm.types import LoRASegments, LoRAWeights, check_call

# Fixed tiles, no per-shape choice. Shrink: Punica's 256-wide K chunk; 32 x 64 steps (best of a
# few fixed configs on an H100, K=3584, 1..8192 tokens; Punica's 16-row tiles were ~10% slower).
SHRINK_BLOCK_M, SHRINK_BLOCK_K, SHRINK_CHUNK_K = 32, 64, 256
SHRINK_WARPS, SHRINK_STAGES = 4, 3
# Expand: Punica's CUTLASS threadblock tile 32 x 128 with K step 16 (also the fastest there)
EXPAND_BLOCK_M, EXPAND_BLOCK_N, EXPAND_BLOCK_K = 32, 128, 16
EXPAND_WARPS, EXPAND_STAGES = 4, 2
REDUCE_BLOCK = 1024
GRID_AXIS_LIMIT = 65535


@dataclass(frozen=True)
class SGMVPrepared:
    weights: LoRAWeights
    block_r: int  # max_rank rounded up to a power of two, >= 16 (tl.dot's minimum)
    tiles: torch.Tensor  # [n_tiles, 3] int32: (slice, first column, slice end) per BLOCK_N tile


def slice_tiles(offsets: tuple[int, ...], block_n: int, device: torch.device) -> torch.Tensor:
    """[n_tiles, 3] int32 table (slice, first column, end column of the slice): every tile lies in
    one slice, so a single launch covers all slices without tiles that straddle two."""
    rows = []
    for s, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
        rows += [(s, col, hi) for col in range(lo, hi, block_n)]
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1, 3)


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of the device (host query, cached; 132 without CUDA)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


# fmt: off
@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, out_ptr, indptr_ptr, slots_ptr, ranks_ptr,
    K, stride_x, chunk_stride, stride_as, stride_al,
    NUM_SLICES: tl.constexpr, MAX_RANK: tl.constexpr, SPLIT: tl.constexpr,
    CHUNK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr, PREC: tl.constexpr,
):
    """out[(chunk,) rows, s, :] = x[rows, chunk] @ a[slot, s, :rank, chunk]^T for one M tile."""
    seg = tl.program_id(2)
    slot = tl.load(slots_ptr + seg)
    start = tl.load(indptr_ptr + seg)
    seg_len = tl.load(indptr_ptr + seg + 1) - start
    if slot < 0 or tl.program_id(1) * BLOCK_M >= seg_len:
        return
    rank = tl.load(ranks_ptr + slot)
    num_chunks = tl.num_programs(0) // NUM_SLICES
    s = tl.program_id(0) // num_chunks
    chunk = tl.program_id(0) % num_chunks
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < seg_len
    rows = (start + offs_m).to(tl.int64)
    x_rows = x_ptr + rows[:, None] * stride_x  # [BLOCK_M, 1]
    a_rows = a_ptr + slot.to(tl.int64) * stride_as + s * stride_al + offs_r[:, None] * K
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(chunk * CHUNK_K, chunk * CHUNK_K + CHUNK_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        xt = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(  # [BLOCK_R, BLOCK_K], rows past the slot's rank never read
            a_rows + offs_k[None, :], mask=(offs_r[:, None] < rank) & k_mask[None, :], other=0.0
        )
        acc += tl.dot(xt, tl.trans(at), input_precision=PREC)
    cols = s * MAX_RANK + offs_r
    out = out_ptr + rows[:, None] * (NUM_SLICES * MAX_RANK) + cols[None, :]
    mask = m_mask[:, None] & (offs_r[None, :] < MAX_RANK)
    if SPLIT:  # fp32 partial of this K chunk
        tl.store(out + chunk.to(tl.int64) * chunk_stride, acc, mask=mask)
    else:  # v in the input dtype, as Punica keeps it
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
# fmt: on


# fmt: off
@triton.jit
def _sum_chunks_kernel(part_ptr, v_ptr, numel, NUM_CHUNKS: tl.constexpr, BLOCK: tl.constexpr):
    """v[i] = sum_c part[c, i], rounded to v's dtype (the split-K reduction)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(NUM_CHUNKS):
        acc += tl.load(part_ptr + c * numel + offs, mask=mask, other=0.0)
    tl.store(v_ptr + offs, acc.to(v_ptr.dtype.element_ty), mask=mask)
# fmt: on


# fmt: off
@triton.jit
def _expand_kernel(
    v_ptr, b_ptr, y_ptr, indptr_ptr, slots_ptr, ranks_ptr, scalings_ptr, tiles_ptr,
    N, stride_y, stride_bs,
    NUM_SLICES: tl.constexpr, MAX_RANK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):
    """y[rows, tile] += c * v[rows, s, :rank] @ b[slot, :rank, tile] for one 32x128 tile."""
    seg = tl.program_id(2)
    slot = tl.load(slots_ptr + seg)
    start = tl.load(indptr_ptr + seg)
    seg_len = tl.load(indptr_ptr + seg + 1) - start
    if slot < 0 or tl.program_id(1) * BLOCK_M >= seg_len:
        return
    rank = tl.load(ranks_ptr + slot)
    scale = tl.load(scalings_ptr + slot)
    s = tl.load(tiles_ptr + 3 * tl.program_id(0))
    col0 = tl.load(tiles_ptr + 3 * tl.program_id(0) + 1)
    col_end = tl.load(tiles_ptr + 3 * tl.program_id(0) + 2)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = col0 + tl.arange(0, BLOCK_N)
    m_mask = offs_m < seg_len
    n_mask = offs_n < col_end
    rows = (start + offs_m).to(tl.int64)
    v_rows = v_ptr + rows[:, None] * (NUM_SLICES * MAX_RANK) + s * MAX_RANK  # [BLOCK_M, 1]
    b_cols = b_ptr + slot.to(tl.int64) * stride_bs + offs_n[None, :]  # [1, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < rank
        vt = tl.load(v_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        bt = tl.load(
            b_cols + offs_k[:, None] * N, mask=k_mask[:, None] & n_mask[None, :], other=0.0
        )
        acc += tl.dot(vt, bt, input_precision=PREC)
    y_ptrs = y_ptr + rows[:, None] * stride_y + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    yt = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (yt.to(tl.float32) + scale * acc).to(yt.dtype), mask=mask)
# fmt: on


class SGMVBackend:
    name = "sgmv"
    graph_safe = True  # no host syncs: CUDA-graph capture checked on the H100
    static_prepare = True  # prepare() keeps the pool tensors: valid while their contents change

    def prepare(self, weights: LoRAWeights) -> SGMVPrepared:
        block_r = max(16, triton.next_power_of_2(weights.max_rank))
        tiles = slice_tiles(weights.slice_offsets, EXPAND_BLOCK_N, weights.a.device)
        return SGMVPrepared(weights=weights, block_r=block_r, tiles=tiles)

    def add_lora(
        self, y: torch.Tensor, x: torch.Tensor, prepared: SGMVPrepared, segs: LoRASegments
    ) -> None:
        w = prepared.weights
        check_call(x, y, w, segs)
        num_segs, num_tokens = segs.num_segments, x.shape[0]
        if num_segs == 0 or num_tokens == 0:
            return
        if num_segs > GRID_AXIS_LIMIT:
            raise ValueError(f"{num_segs} segments: sgmv launches at most {GRID_AXIS_LIMIT}")
        # v [T, num_slices, max_rank] in the input dtype (Punica's fp16/bf16 intermediate)
        v = torch.empty(num_tokens, w.num_slices, w.max_rank, dtype=x.dtype, device=x.device)
        prec = "ieee" if x.dtype == torch.float32 else "tf32"
        self._shrink(x, v, prepared, segs, prec)
        self._expand(v, y, prepared, segs, prec)

    def _shrink(
        self, x: torch.Tensor, v: torch.Tensor, p: SGMVPrepared, segs: LoRASegments, prec: str
    ) -> None:
        w = p.weights
        num_segs, num_slices, k = segs.num_segments, w.num_slices, w.in_features
        m_tiles = grid_axis(triton.cdiv(segs.max_seg_len, SHRINK_BLOCK_M), "M tiles")
        chunks = triton.cdiv(k, SHRINK_CHUNK_K)
        if num_segs * m_tiles * num_slices >= _num_sms(x.device):
            chunks = 1  # the unsplit grid fills the GPU: skip the partials' round trip
        chunk_k = SHRINK_CHUNK_K if chunks > 1 else triton.cdiv(k, SHRINK_BLOCK_K) * SHRINK_BLOCK_K
        out = v  # no split: v itself; split: fp32 partials [chunks, T, num_slices, max_rank]
        if chunks > 1:
            out = torch.empty((chunks, *v.shape), dtype=torch.float32, device=x.device)
        _shrink_kernel[(num_slices * chunks, m_tiles, num_segs)](
            x,
            w.a,
            out,
            segs.seg_indptr,
            segs.seg_slots,
            w.ranks,
            k,
            x.stride(0),
            v.numel(),
            w.a.stride(0),
            w.a.stride(1),
            NUM_SLICES=num_slices,
            MAX_RANK=w.max_rank,
            SPLIT=chunks > 1,
            CHUNK_K=chunk_k,
            BLOCK_M=SHRINK_BLOCK_M,
            BLOCK_K=SHRINK_BLOCK_K,
            BLOCK_R=p.block_r,
            PREC=prec,
            num_warps=SHRINK_WARPS,
            num_stages=SHRINK_STAGES,
        )
        if chunks > 1:
            grid = (triton.cdiv(v.numel(), REDUCE_BLOCK),)
            _sum_chunks_kernel[grid](out, v, v.numel(), NUM_CHUNKS=chunks, BLOCK=REDUCE_BLOCK)

    def _expand(
        self, v: torch.Tensor, y: torch.Tensor, p: SGMVPrepared, segs: LoRASegments, prec: str
    ) -> None:
        w = p.weights
        m_tiles = grid_axis(triton.cdiv(segs.max_seg_len, EXPAND_BLOCK_M), "M tiles")
        _expand_kernel[(p.tiles.shape[0], m_tiles, segs.num_segments)](
            v,
            w.b,
            y,
            segs.seg_indptr,
            segs.seg_slots,
            w.ranks,
            w.scalings,
            p.tiles,
            w.out_features,
            y.stride(0),
            w.b.stride(0),
            NUM_SLICES=w.num_slices,
            MAX_RANK=w.max_rank,
            BLOCK_M=EXPAND_BLOCK_M,
            BLOCK_N=EXPAND_BLOCK_N,
            BLOCK_K=EXPAND_BLOCK_K,
            PREC=prec,
            num_warps=EXPAND_WARPS,
            num_stages=EXPAND_STAGES,
        )


def grid_axis(n: int, what: str) -> int:
    """n, checked against the CUDA limit of a grid's second and third axes."""
    if n > GRID_AXIS_LIMIT:
        raise ValueError(f"{n} {what}: a grid axis takes at most {GRID_AXIS_LIMIT}")
    return n
