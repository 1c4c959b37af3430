"""ATMM expand: y[t, off_s:off_{s+1}] += c * v[t, s, :r] @ b[slot, :r, off_s:off_{s+1}].

Semantics and layouts: ``atmm.types``; v is the fp32 output of the shrink. Rows of slot -1 (and
rows of no segment) are left untouched; every other (row, column) of y is owned by exactly one
program, so there are no atomics and the result is deterministic.

The output columns of all slices are cut into BLOCK_N tiles per slice (a tile never straddles
two slices); ``tile_starts`` [num_slices + 1] (host-made, cached per config) maps a program to its
slice. Two kernels, picked by the tiling config (``atmm.config_table``):

- ``tile`` (prefill): grid ``(S, cdiv(max_seg_len, BLOCK_M), cdiv(num_tiles, N_TILES))``; a
  program does N_TILES consecutive output tiles of its rows (their v rows are re-read from L1,
  not from L2 once per tile); per tile, [BLOCK_M, BLOCK_K]
  tiles of v (rounded to the weight dtype, as the tensor cores take it) times [BLOCK_K, BLOCK_N]
  tiles of B, looping over the slot's rank only (no padding to the max rank), fp32 accumulation,
  then y is read, added to and written once.
- ``gemv`` (decode): grid ``(S, max_seg_len, num_tiles)``; one row per program, v row times a
  [BLOCK_K, BLOCK_N] tile of B as a broadcast multiply and column sum, in fp32.

CUDA-graph safe: launch shapes depend on host sizes only.
Tested: ``test/kernel/test_kernel_correctness.py`` (CPU interpreter fp32/fp16; GPU bf16/fp16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# fmt: off
@triton.jit
def _tile_slice(tile_starts_ptr, tile, NUM_SLICES: tl.constexpr):
    """The slice that output tile ``tile`` belongs to, and the tile's index inside it."""
    slice_id = 0
    for j in tl.static_range(1, NUM_SLICES):
        slice_id += (tile >= tl.load(tile_starts_ptr + j)).to(tl.int32)
    return slice_id, tile - tl.load(tile_starts_ptr + slice_id)
# fmt: on


# fmt: off
@triton.jit
def _expand_setup(
    seg_indptr_ptr, seg_slots_ptr, ranks_ptr, scalings_ptr, offsets_ptr, tile_starts_ptr, m0,
    tile, NUM_SLICES: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seg = tl.program_id(0)
    start = tl.load(seg_indptr_ptr + seg)
    end = tl.load(seg_indptr_ptr + seg + 1)
    slot = tl.load(seg_slots_ptr + seg)
    safe_slot = tl.maximum(slot, 0)
    rank = tl.load(ranks_ptr + safe_slot)
    scale = tl.load(scalings_ptr + safe_slot)
    slice_id, tile_in_slice = _tile_slice(tile_starts_ptr, tile, NUM_SLICES)
    col_lo = tl.load(offsets_ptr + slice_id)
    col_hi = tl.load(offsets_ptr + slice_id + 1)
    cols = col_lo + tile_in_slice * BLOCK_N + tl.arange(0, BLOCK_N)
    has_work = (slot >= 0) & (start + m0 < end) & (rank > 0)
    return start, end, slot, rank, scale, slice_id, cols, cols < col_hi, has_work
# fmt: on


# fmt: off
@triton.jit
def _expand_tile_kernel(
    v_ptr, b_ptr, y_ptr, seg_indptr_ptr, seg_slots_ptr, ranks_ptr, scalings_ptr, offsets_ptr,
    tile_starts_ptr, num_tiles, stride_vt, stride_vl, stride_bs, stride_br, stride_yt,
    NUM_SLICES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, N_TILES: tl.constexpr, FP32: tl.constexpr,
):
    """One program: BLOCK_M rows x N_TILES consecutive output tiles (its v rows stay in L1)."""
    m0 = tl.program_id(1) * BLOCK_M
    for j in range(N_TILES):
        tile = tl.program_id(2) * N_TILES + j
        start, end, slot, rank, scale, slice_id, cols, col_ok, has_work = _expand_setup(
            seg_indptr_ptr, seg_slots_ptr, ranks_ptr, scalings_ptr, offsets_ptr,
            tile_starts_ptr, m0, tl.minimum(tile, num_tiles - 1), NUM_SLICES, BLOCK_N,
        )
        if has_work & (tile < num_tiles):
            _expand_tile(v_ptr, b_ptr, y_ptr, start + m0, end, slot, rank, scale, slice_id, cols,
                         col_ok, stride_vt, stride_vl, stride_bs, stride_br, stride_yt,
                         BLOCK_M, BLOCK_N, BLOCK_K, FP32)
# fmt: on


# fmt: off
@triton.jit
def _expand_tile(
    v_ptr, b_ptr, y_ptr, row0, end, slot, rank, scale, slice_id, cols, col_ok,
    stride_vt, stride_vl, stride_bs, stride_br, stride_yt,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP32: tl.constexpr,
):
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    v_rows = v_ptr + rows.to(tl.int64)[:, None] * stride_vt + slice_id * stride_vl
    b_base = b_ptr + slot.to(tl.int64) * stride_bs + cols[None, :]
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < rank
        v = tl.load(v_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_base + ks[:, None] * stride_br, mask=k_ok[:, None] & col_ok[None, :],
                    other=0.0)
        if FP32:
            acc += tl.dot(v, b, input_precision="ieee")
        else:
            acc += tl.dot(v.to(b.dtype), b)
    y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_yt + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + scale * acc).to(y.dtype), mask=mask)
# fmt: on


# fmt: off
@triton.jit
def _expand_gemv_kernel(
    v_ptr, b_ptr, y_ptr, seg_indptr_ptr, seg_slots_ptr, ranks_ptr, scalings_ptr, offsets_ptr,
    tile_starts_ptr, stride_vt, stride_vl, stride_bs, stride_br, stride_yt,
    NUM_SLICES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    m0 = tl.program_id(1)  # one row per program
    start, end, slot, rank, scale, slice_id, cols, col_ok, has_work = _expand_setup(
        seg_indptr_ptr, seg_slots_ptr, ranks_ptr, scalings_ptr, offsets_ptr, tile_starts_ptr,
        m0, tl.program_id(2), NUM_SLICES, BLOCK_N,
    )
    if has_work:
        row = (start + m0).to(tl.int64)
        v_row = v_ptr + row * stride_vt + slice_id * stride_vl
        b_base = b_ptr + slot.to(tl.int64) * stride_bs + cols[None, :]
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, rank, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < rank
            v = tl.load(v_row + ks, mask=k_ok, other=0.0)
            b = tl.load(b_base + ks[:, None] * stride_br, mask=k_ok[:, None] & col_ok[None, :],
                        other=0.0)
            acc += tl.sum(v[:, None] * b.to(tl.float32), axis=0)
        y_ptrs = y_ptr + row * stride_yt + cols
        y = tl.load(y_ptrs, mask=col_ok, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + scale * acc).to(y.dtype), mask=col_ok)
# fmt: on


_TILE_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}


def slice_tiles(offsets: tuple[int, ...], block_n: int, device) -> tuple:
    """(offsets tensor [L+1], tile_starts tensor [L+1], number of tiles), cached (graph safe)."""
    key = (offsets, block_n, str(device))
    if key not in _TILE_TABLES:
        starts = [0]
        for lo, hi in zip(offsets, offsets[1:]):
            starts.append(starts[-1] + triton.cdiv(hi - lo, block_n))
        _TILE_TABLES[key] = (
            torch.tensor(offsets, dtype=torch.int32, device=device),
            torch.tensor(starts, dtype=torch.int32, device=device),
            starts[-1],
        )
    return _TILE_TABLES[key]


def launch_expand(v, b, y, segs, ranks, scalings, offsets, config: dict) -> None:
    """v [T, L, R] fp32, b [slots, R, N], y [T, N] (updated in place)."""
    block_n = config["BLOCK_N"]
    offsets_t, tile_starts, num_tiles = slice_tiles(tuple(offsets), block_n, y.device)
    args = (
        v,
        b,
        y,
        segs.seg_indptr,
        segs.seg_slots,
        ranks,
        scalings,
        offsets_t,
        tile_starts,
        v.stride(0),
        v.stride(1),
        b.stride(0),
        b.stride(1),
        y.stride(0),
    )
    common = dict(
        NUM_SLICES=len(offsets) - 1,
        BLOCK_N=block_n,
        BLOCK_K=config["BLOCK_K"],
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    if config["path"] == "gemv":
        _expand_gemv_kernel[(segs.num_segments, segs.max_seg_len, num_tiles)](*args, **common)
    else:
        n_tiles = config.get("N_TILES", 1)
        grid = (
            segs.num_segments,
            triton.cdiv(segs.max_seg_len, config["BLOCK_M"]),
            triton.cdiv(num_tiles, n_tiles),
        )
        _expand_tile_kernel[grid](
            *args[:9],
            num_tiles,
            *args[9:],
            BLOCK_M=config["BLOCK_M"],
            N_TILES=n_tiles,
            FP32=y.dtype == torch.float32,
            **common,
        )
