"""S-LoRA-style baseline: MBGMV (per token) for decode-like batches, MBGMM (per segment) else.

Computes ``y[t] += c * (x[t] @ A_s^T) @ B_s`` per slice for every row of a segment with an adapter,
after S-LoRA (S-LoRA/S-LoRA, MLSys'24). S-LoRA keeps adapter rows in a unified paged pool and
reaches them through a location table; ``prepare`` builds that table once, on the device, over the
flat row pools ``a.view(-1, K)`` and ``b.view(-1, N)``:

    a_loc[a_start[slot] + s * r + j] = row of a[slot, s, j]   (a_len[slot] = num_slices * r)
    b_loc[b_start[slot] + j]         = row of b[slot, j, :]   (r = ranks[slot])

so kernels gather weight rows by pool index and never touch rows past a slot's rank. Two paths:

* MBGMV (S-LoRA's CUDA ``bgmv_multi_lora_rank_{shrink,expand}``), used when every segment has at
  most ``DECODE_MAX_SEG_LEN`` = 8 rows (``segs.max_seg_len``; decode steps, where S-LoRA batches one
  token per request). One program per token (and 4 rank rows / 128 output columns): it finds its
  segment by a binary search over ``seg_indptr`` on the device, then runs a GEMV over the gathered
  rows with fp32 multiply-adds (no tensor cores). Rank chunks past the slot's rank exit or are
  skipped.
* MBGMM (S-LoRA's Triton ``_shrink_fwd_kernel`` / ``_expand_fwd_kernel`` in ``lora_prefill.py``),
  grid (segment, tile, M block) with S-LoRA's fixed tiles: shrink BLOCK_M=32, 16 rank columns,
  BLOCK_K=128; expand BLOCK_M=32, BLOCK_N=128 and the whole (max) rank at once.

Accumulation is fp32; the intermediate ``v`` is stored in the input dtype, as S-LoRA stores it.
Slices of a stacked pool share each launch (a slice index in the grid, or a per-tile table).

Limits: grids come from host metadata only (T, segments, ``max_seg_len``, shapes); tokens past
``seg_indptr[-1]``, slot -1 rows and empty segments are never read or written. At most 65535 rank
or column tiles per slice set and 65535 M blocks per call (grid limits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from atmm.baselines.punica_sgmv import grid_axis, slice_tiles
from atmm.types import LoRASegments, LoRAWeights, check_call

DECODE_MAX_SEG_LEN = 8  # MBGMV (per token) when every segment is at most this long, else MBGMM
# MBGMV shrink: 4 rank rows x 512 of K per step (S-LoRA: one rank row per block; 4 x 512 was the
# fastest of a few fixed configs on an H100, 16 x 256 up to 1.6x slower)
GEMV_BLOCK_R, GEMV_BLOCK_K = 4, 512
GEMV_BLOCK_D, GEMV_BLOCK_N = 16, 128  # MBGMV expand: 16 rank rows x 128 columns per step
GEMM_BLOCK_M, GEMM_BLOCK_R, GEMM_BLOCK_K = 32, 16, 128  # S-LoRA _shrink_fwd_kernel
GEMV_WARPS = 4
GEMM_BLOCK_N = 128  # S-LoRA _expand_fwd_kernel (BLOCK_M 32, BLOCK_RANK = max rank)


@dataclass(frozen=True)
class MBGMVPrepared:
    weights: LoRAWeights
    a_rows: torch.Tensor  # [num_slots * num_slices * max_rank, K] flat view of the a pool
    b_rows: torch.Tensor  # [num_slots * max_rank, N] flat view of the b pool
    a_start: torch.Tensor  # [num_slots] int32 offset into a_loc
    a_len: torch.Tensor  # [num_slots] int32 = num_slices * rank
    a_loc: torch.Tensor  # [sum a_len (+1)] int32 row of a_rows
    b_start: torch.Tensor  # [num_slots] int32 offset into b_loc
    b_loc: torch.Tensor  # [sum rank (+1)] int32 row of b_rows
    gemv_tiles: torch.Tensor  # [n_tiles, 3] int32 (slice, first column, slice end), GEMV_BLOCK_N
    gemm_tiles: torch.Tensor  # the same for GEMM_BLOCK_N
    block_rank: int  # max_rank rounded up to a power of two, >= 16


def flat_rows(pool: torch.Tensor, width: int) -> torch.Tensor:
    """[rows, width] view over every row a (possibly packed, overlapping) pool view can reach."""
    span = sum((n - 1) * st for n, st in zip(pool.shape, pool.stride())) + 1
    return pool.as_strided((span // width, width), (width, 1))


def build_locations(weights: LoRAWeights) -> dict[str, torch.Tensor]:
    """S-LoRA's a_start / a_len / a_loc (and b_start / b_loc), computed on the pool's device."""
    dev, slices = weights.a.device, weights.num_slices
    ranks = weights.ranks.to(torch.int64)  # [num_slots]
    slot_ids = torch.arange(weights.num_slots, device=dev)
    a_len, b_len = ranks * slices, ranks
    a_start, b_start = torch.cumsum(a_len, 0) - a_len, torch.cumsum(b_len, 0) - b_len
    # entry e of slot i (e < a_len[i]) is slice e // r, rank row e % r
    a_slot = torch.repeat_interleave(slot_ids, a_len)
    e = torch.arange(a_slot.numel(), device=dev) - a_start[a_slot]
    r = ranks[a_slot]
    # rows of the flat views, through the pool's strides (a packed pool has a one-row slot stride)
    sa, sl, k = weights.a.stride(0), weights.a.stride(1), weights.in_features
    a_loc = (a_slot * sa + (e // r.clamp(min=1)) * sl) // k + e % r.clamp(min=1)
    b_slot = torch.repeat_interleave(slot_ids, b_len)
    b_row0 = b_slot * (weights.b.stride(0) // weights.out_features)
    b_loc = b_row0 + torch.arange(b_slot.numel(), device=dev) - b_start[b_slot]
    pad = torch.zeros(1, dtype=torch.int64, device=dev)  # keeps the tables non-empty
    tables = {"a_start": a_start, "a_len": a_len, "a_loc": torch.cat([a_loc, pad])}
    tables.update(b_start=b_start, b_loc=torch.cat([b_loc, pad]))
    return {name: t.to(torch.int32) for name, t in tables.items()}


# fmt: off
@triton.jit
def _find_segment(indptr_ptr, t, num_segments, steps):
    """Largest i in [0, num_segments] with indptr[i] <= t (== num_segments: t past the end)."""
    lo = t * 0
    hi = lo + num_segments
    for _ in range(steps):
        mid = (lo + hi + 1) // 2
        go = tl.load(indptr_ptr + mid) <= t
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    return lo
# fmt: on


# fmt: off
@triton.jit
def _mbgmv_shrink_kernel(
    x_ptr, a_ptr, v_ptr, indptr_ptr, slots_ptr, a_start_ptr, a_len_ptr, a_loc_ptr,
    num_segments, steps, K, stride_x,
    NUM_SLICES: tl.constexpr, MAX_RANK: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """v[t, s, rank tile] = gathered a rows @ x[t]: one token, one slice, BLOCK_R rank rows."""
    t = tl.program_id(0)
    seg = _find_segment(indptr_ptr, t, num_segments, steps)
    if seg >= num_segments:
        return
    slot = tl.load(slots_ptr + seg)
    if slot < 0:
        return
    rank = tl.load(a_len_ptr + slot) // NUM_SLICES
    r_tiles = tl.cdiv(MAX_RANK, BLOCK_R)
    s = tl.program_id(1) // r_tiles
    offs_r = (tl.program_id(1) % r_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    if (tl.program_id(1) % r_tiles) * BLOCK_R >= rank:
        return
    r_mask = offs_r < rank
    loc = tl.load(a_loc_ptr + tl.load(a_start_ptr + slot) + s * rank + offs_r, mask=r_mask, other=0)
    w_rows = a_ptr + loc.to(tl.int64)[:, None] * K  # [BLOCK_R, 1]
    x_row = x_ptr + t.to(tl.int64) * stride_x
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        xv = tl.load(x_row + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        wv = tl.load(w_rows + offs_k[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(wv.to(tl.float32) * xv[None, :], axis=1)
    v_row = v_ptr + t.to(tl.int64) * (NUM_SLICES * MAX_RANK) + s * MAX_RANK
    tl.store(v_row + offs_r, acc.to(v_ptr.dtype.element_ty), mask=r_mask)
# fmt: on


# fmt: off
@triton.jit
def _mbgmv_expand_kernel(
    v_ptr, b_ptr, y_ptr, indptr_ptr, slots_ptr, a_len_ptr, b_start_ptr, b_loc_ptr, scalings_ptr,
    tiles_ptr, num_segments, steps, N, stride_y,
    NUM_SLICES: tl.constexpr, MAX_RANK: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """y[t, tile] += c * v[t, s, :rank] @ gathered b rows: one token, one BLOCK_N column tile."""
    t = tl.program_id(0)
    seg = _find_segment(indptr_ptr, t, num_segments, steps)
    if seg >= num_segments:
        return
    slot = tl.load(slots_ptr + seg)
    if slot < 0:
        return
    rank = tl.load(a_len_ptr + slot) // NUM_SLICES
    b_start = tl.load(b_start_ptr + slot)
    s = tl.load(tiles_ptr + 3 * tl.program_id(1))
    offs_n = tl.load(tiles_ptr + 3 * tl.program_id(1) + 1) + tl.arange(0, BLOCK_N)
    n_mask = offs_n < tl.load(tiles_ptr + 3 * tl.program_id(1) + 2)
    v_row = v_ptr + t.to(tl.int64) * (NUM_SLICES * MAX_RANK) + s * MAX_RANK
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, rank, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < rank
        vv = tl.load(v_row + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        loc = tl.load(b_loc_ptr + b_start + offs_d, mask=d_mask, other=0).to(tl.int64)
        wv = tl.load(
            b_ptr + loc[:, None] * N + offs_n[None, :],
            mask=d_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc += tl.sum(vv[:, None] * wv.to(tl.float32), axis=0)
    y_ptrs = y_ptr + t.to(tl.int64) * stride_y + offs_n
    yt = tl.load(y_ptrs, mask=n_mask, other=0.0)
    scale = tl.load(scalings_ptr + slot)
    tl.store(y_ptrs, (yt.to(tl.float32) + scale * acc).to(yt.dtype), mask=n_mask)
# fmt: on


# fmt: off
@triton.jit
def _mbgmm_shrink_kernel(
    x_ptr, a_ptr, v_ptr, indptr_ptr, slots_ptr, a_start_ptr, a_len_ptr, a_loc_ptr,
    K, stride_x,
    NUM_SLICES: tl.constexpr, MAX_RANK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):
    """v[rows, s, rank tile] = x[rows] @ gathered a rows^T (S-LoRA's _shrink_fwd_kernel)."""
    seg = tl.program_id(0)
    slot = tl.load(slots_ptr + seg)
    start = tl.load(indptr_ptr + seg)
    seg_len = tl.load(indptr_ptr + seg + 1) - start
    if slot < 0 or tl.program_id(2) * BLOCK_M >= seg_len:
        return
    rank = tl.load(a_len_ptr + slot) // NUM_SLICES
    r_tiles = tl.cdiv(MAX_RANK, BLOCK_R)
    s = tl.program_id(1) // r_tiles
    if (tl.program_id(1) % r_tiles) * BLOCK_R >= rank:
        return
    offs_r = (tl.program_id(1) % r_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_mask = offs_r < rank
    m_mask = offs_m < seg_len
    loc = tl.load(a_loc_ptr + tl.load(a_start_ptr + slot) + s * rank + offs_r, mask=r_mask, other=0)
    w_cols = a_ptr + loc.to(tl.int64)[None, :] * K  # [1, BLOCK_R]: rank r is column r
    rows = (start + offs_m).to(tl.int64)
    x_rows = x_ptr + rows[:, None] * stride_x
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        xt = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        wt = tl.load(w_cols + offs_k[:, None], mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc += tl.dot(xt, wt, input_precision=PREC)
    v_ptrs = v_ptr + rows[:, None] * (NUM_SLICES * MAX_RANK) + s * MAX_RANK + offs_r[None, :]
    tl.store(v_ptrs, acc.to(v_ptr.dtype.element_ty), mask=m_mask[:, None] & r_mask[None, :])
# fmt: on


# fmt: off
@triton.jit
def _mbgmm_expand_kernel(
    v_ptr, b_ptr, y_ptr, indptr_ptr, slots_ptr, a_len_ptr, b_start_ptr, b_loc_ptr, scalings_ptr,
    tiles_ptr, N, stride_y,
    NUM_SLICES: tl.constexpr, MAX_RANK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_RANK: tl.constexpr, PREC: tl.constexpr,
):
    """y[rows, tile] += c * v[rows, s, :rank] @ gathered b rows (S-LoRA's _expand_fwd_kernel)."""
    seg = tl.program_id(0)
    slot = tl.load(slots_ptr + seg)
    start = tl.load(indptr_ptr + seg)
    seg_len = tl.load(indptr_ptr + seg + 1) - start
    if slot < 0 or tl.program_id(2) * BLOCK_M >= seg_len:
        return
    rank = tl.load(a_len_ptr + slot) // NUM_SLICES
    s = tl.load(tiles_ptr + 3 * tl.program_id(1))
    offs_n = tl.load(tiles_ptr + 3 * tl.program_id(1) + 1) + tl.arange(0, BLOCK_N)
    n_mask = offs_n < tl.load(tiles_ptr + 3 * tl.program_id(1) + 2)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < seg_len
    offs_d = tl.arange(0, BLOCK_RANK)
    d_mask = offs_d < rank
    rows = (start + offs_m).to(tl.int64)
    v_ptrs = v_ptr + rows[:, None] * (NUM_SLICES * MAX_RANK) + s * MAX_RANK + offs_d[None, :]
    vt = tl.load(v_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_M, RANK]
    loc = tl.load(b_loc_ptr + tl.load(b_start_ptr + slot) + offs_d, mask=d_mask, other=0)
    w_ptrs = b_ptr + loc.to(tl.int64)[:, None] * N + offs_n[None, :]
    wt = tl.load(w_ptrs, mask=d_mask[:, None] & n_mask[None, :], other=0.0)  # [RANK, BLOCK_N]
    acc = tl.dot(vt, wt, input_precision=PREC)
    y_ptrs = y_ptr + rows[:, None] * stride_y + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    yt = tl.load(y_ptrs, mask=mask, other=0.0)
    scale = tl.load(scalings_ptr + slot)
    tl.store(y_ptrs, (yt.to(tl.float32) + scale * acc).to(yt.dtype), mask=mask)
# fmt: on


class MBGMVBackend:
    name = "mbgmv"
    graph_safe = True  # no host syncs: CUDA-graph capture checked on the H100

    def prepare(self, weights: LoRAWeights) -> MBGMVPrepared:
        dev, offsets = weights.a.device, weights.slice_offsets
        return MBGMVPrepared(
            weights=weights,
            a_rows=flat_rows(weights.a, weights.in_features),
            b_rows=flat_rows(weights.b, weights.out_features),
            gemv_tiles=slice_tiles(offsets, GEMV_BLOCK_N, dev),
            gemm_tiles=slice_tiles(offsets, GEMM_BLOCK_N, dev),
            block_rank=max(16, triton.next_power_of_2(weights.max_rank)),
            **build_locations(weights),
        )

    def add_lora(
        self, y: torch.Tensor, x: torch.Tensor, prepared: MBGMVPrepared, segs: LoRASegments
    ) -> None:
        w = prepared.weights
        check_call(x, y, w, segs)
        if segs.num_segments == 0 or x.shape[0] == 0:
            return
        # v [T, num_slices, max_rank] in the input dtype, as S-LoRA keeps it
        v = torch.empty(x.shape[0], w.num_slices, w.max_rank, dtype=x.dtype, device=x.device)
        if segs.max_seg_len <= DECODE_MAX_SEG_LEN:
            self._mbgmv(y, x, v, prepared, segs)
        else:
            self._mbgmm(y, x, v, prepared, segs)

    @staticmethod
    def _mbgmv(y: Tensor, x: Tensor, v: Tensor, p: MBGMVPrepared, segs: LoRASegments) -> None:
        """Decode path: one program per (token, rank tile), then per (token, column tile)."""
        w, num_tokens, num_segs = p.weights, x.shape[0], segs.num_segments
        steps = num_segs.bit_length()  # binary-search steps over num_segs + 1 offsets
        r_tiles = triton.cdiv(w.max_rank, GEMV_BLOCK_R) * w.num_slices
        _mbgmv_shrink_kernel[(num_tokens, grid_axis(r_tiles, "rank tiles"))](
            x,
            p.a_rows,
            v,
            segs.seg_indptr,
            segs.seg_slots,
            p.a_start,
            p.a_len,
            p.a_loc,
            num_segs,
            steps,
            w.in_features,
            x.stride(0),
            NUM_SLICES=w.num_slices,
            MAX_RANK=w.max_rank,
            BLOCK_R=GEMV_BLOCK_R,
            BLOCK_K=GEMV_BLOCK_K,
            num_warps=GEMV_WARPS,
        )
        _mbgmv_expand_kernel[(num_tokens, grid_axis(p.gemv_tiles.shape[0], "column tiles"))](
            v,
            p.b_rows,
            y,
            segs.seg_indptr,
            segs.seg_slots,
            p.a_len,
            p.b_start,
            p.b_loc,
            w.scalings,
            p.gemv_tiles,
            num_segs,
            steps,
            w.out_features,
            y.stride(0),
            NUM_SLICES=w.num_slices,
            MAX_RANK=w.max_rank,
            BLOCK_D=GEMV_BLOCK_D,
            BLOCK_N=GEMV_BLOCK_N,
            num_warps=GEMV_WARPS,
        )

    @staticmethod
    def _mbgmm(y: Tensor, x: Tensor, v: Tensor, p: MBGMVPrepared, segs: LoRASegments) -> None:
        """Prefill path: S-LoRA's Triton kernels, grid (segment, tile, M block)."""
        w, num_segs = p.weights, segs.num_segments
        prec = "ieee" if x.dtype == torch.float32 else "tf32"
        m_blocks = grid_axis(triton.cdiv(segs.max_seg_len, GEMM_BLOCK_M), "M blocks")
        r_tiles = triton.cdiv(w.max_rank, GEMM_BLOCK_R) * w.num_slices
        _mbgmm_shrink_kernel[(num_segs, grid_axis(r_tiles, "rank tiles"), m_blocks)](
            x,
            p.a_rows,
            v,
            segs.seg_indptr,
            segs.seg_slots,
            p.a_start,
            p.a_len,
            p.a_loc,
            w.in_features,
            x.stride(0),
            NUM_SLICES=w.num_slices,
            MAX_RANK=w.max_rank,
            BLOCK_M=GEMM_BLOCK_M,
            BLOCK_R=GEMM_BLOCK_R,
            BLOCK_K=GEMM_BLOCK_K,
            PREC=prec,
            num_warps=4,
            num_stages=1,
        )
        n_tiles = grid_axis(p.gemm_tiles.shape[0], "column tiles")
        _mbgmm_expand_kernel[(num_segs, n_tiles, m_blocks)](
            v,
            p.b_rows,
            y,
            segs.seg_indptr,
            segs.seg_slots,
            p.a_len,
            p.b_start,
            p.b_loc,
            w.scalings,
            p.gemm_tiles,
            w.out_features,
            y.stride(0),
            NUM_SLICES=w.num_slices,
            MAX_RANK=w.max_rank,
            BLOCK_M=GEMM_BLOCK_M,
            BLOCK_N=GEMM_BLOCK_N,
            BLOCK_RANK=p.block_rank,
            PREC=prec,
            num_warps=4,
            num_stages=2,
        )
