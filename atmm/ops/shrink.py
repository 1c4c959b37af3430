"""ATMM shrink: v[t, s, :r] = x[t] @ a[slot, s, :r]^T for every row t of a segment with an adapter.

Semantics and layouts: ``atmm.types``. v is fp32 [T, num_slices, max_rank]; entries of rows with
no adapter and past a slot's rank are left unspecified (never written).

Two kernels, picked by the tiling config (``atmm.config_table``):

- ``tile`` (prefill): grid ``(S, cdiv(max_seg_len, BLOCK_M), num_slices * SPLIT_K * R_CHUNKS)``.
  A program owns BLOCK_M rows of one segment, one slice, one K split and one BLOCK_R chunk of the
  rank; it streams [BLOCK_M, BLOCK_K] tiles of x and [BLOCK_K, BLOCK_R] tiles of the slot's A
  (tensor-core ``tl.dot``, fp32 accumulation, ``num_stages`` pipelined loads).
- ``gemv`` (decode): grid ``(S, max_seg_len, num_slices * SPLIT_K * R_CHUNKS)``: one row per
  program, A tile times x chunk as a broadcast multiply and row sum (no tensor cores; a 1-token
  segment would waste 15/16 of a 16-row tile).

Rank chunks past the slot's rank exit at once, so a rank-8 adapter next to a rank-128 one costs
rank 8 (to BLOCK_R granularity): no padding to the max rank. With SPLIT_K > 1 the K splits add
into v with fp32 atomics (v is zeroed first). Programs past a segment's end, of slot -1 or of
rank 0 exit at once: launch shapes depend on host sizes only (CUDA-graph safe).
Tested: ``test/kernel/test_kernel_correctness.py`` (CPU interpreter fp32/fp16; GPU bf16/fp16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# fmt: off
@triton.jit
def _program_work(
    seg_indptr_ptr, seg_slots_ptr, ranks_ptr, m0, pid2,
    SPLIT_K: tl.constexpr, R_CHUNKS: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Decode the program ids: (row start, row end, slot, rank, slice, K split, rank chunk start),
    and whether there is work (a real row, an adapter, a rank chunk inside the rank)."""
    seg = tl.program_id(0)
    start = tl.load(seg_indptr_ptr + seg)
    end = tl.load(seg_indptr_ptr + seg + 1)
    slot = tl.load(seg_slots_ptr + seg)
    rank = tl.load(ranks_ptr + tl.maximum(slot, 0))
    r_chunk = pid2 % R_CHUNKS
    split = (pid2 // R_CHUNKS) % SPLIT_K
    slice_id = pid2 // (R_CHUNKS * SPLIT_K)
    r0 = r_chunk * BLOCK_R
    has_work = (slot >= 0) & (start + m0 < end) & (r0 < rank)
    return start, end, slot, rank, slice_id, split, r0, has_work
# fmt: on


# fmt: off
@triton.jit
def _shrink_tile_kernel(
    x_ptr, a_ptr, v_ptr, seg_indptr_ptr, seg_slots_ptr, ranks_ptr,
    K, k_per_split, stride_xt, stride_as, stride_al, stride_ar, stride_vt, stride_vl,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    SPLIT_K: tl.constexpr, R_CHUNKS: tl.constexpr, FP32: tl.constexpr,
):
    m0 = tl.program_id(1) * BLOCK_M
    start, end, slot, rank, slice_id, split, r0, has_work = _program_work(
        seg_indptr_ptr, seg_slots_ptr, ranks_ptr, m0, tl.program_id(2), SPLIT_K, R_CHUNKS, BLOCK_R
    )
    if has_work:
        rows = start + m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < rank
        offs_k = tl.arange(0, BLOCK_K)
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xt  # [BLOCK_M, 1]
        a_base = a_ptr + slot.to(tl.int64) * stride_as + slice_id * stride_al
        a_cols = a_base + offs_r[None, :] * stride_ar  # [1, BLOCK_R]: A^T tile columns
        acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        k_begin = split * k_per_split
        k_end = tl.minimum(k_begin + k_per_split, K)
        for k0 in range(k_begin, k_end, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < k_end
            x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            a = tl.load(a_cols + ks[:, None], mask=k_ok[:, None] & r_ok[None, :], other=0.0)
            if FP32:
                acc += tl.dot(x, a, input_precision="ieee")
            else:
                acc += tl.dot(x, a)
        v_ptrs = v_ptr + rows.to(tl.int64)[:, None] * stride_vt + slice_id * stride_vl
        mask = row_ok[:, None] & r_ok[None, :]
        if SPLIT_K == 1:
            tl.store(v_ptrs + offs_r[None, :], acc, mask=mask)
        else:
            tl.atomic_add(v_ptrs + offs_r[None, :], acc, mask=mask, sem="relaxed")
# fmt: on


# fmt: off
@triton.jit
def _shrink_gemv_kernel(
    x_ptr, a_ptr, v_ptr, seg_indptr_ptr, seg_slots_ptr, ranks_ptr,
    K, k_per_split, stride_xt, stride_as, stride_al, stride_ar, stride_vt, stride_vl,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    SPLIT_K: tl.constexpr, R_CHUNKS: tl.constexpr,
):
    m0 = tl.program_id(1)  # one row per program
    start, end, slot, rank, slice_id, split, r0, has_work = _program_work(
        seg_indptr_ptr, seg_slots_ptr, ranks_ptr, m0, tl.program_id(2), SPLIT_K, R_CHUNKS, BLOCK_R
    )
    if has_work:
        row = (start + m0).to(tl.int64)
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < rank
        offs_k = tl.arange(0, BLOCK_K)
        a_base = a_ptr + slot.to(tl.int64) * stride_as + slice_id * stride_al
        a_rows = a_base + offs_r[:, None] * stride_ar  # [BLOCK_R, 1]
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        k_begin = split * k_per_split
        k_end = tl.minimum(k_begin + k_per_split, K)
        for k0 in range(k_begin, k_end, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < k_end
            x = tl.load(x_ptr + row * stride_xt + ks, mask=k_ok, other=0.0).to(tl.float32)
            a = tl.load(a_rows + ks[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
        v_ptrs = v_ptr + row * stride_vt + slice_id * stride_vl + offs_r
        if SPLIT_K == 1:
            tl.store(v_ptrs, acc, mask=r_ok)
        else:
            tl.atomic_add(v_ptrs, acc, mask=r_ok, sem="relaxed")
# fmt: on


def launch_shrink(x, a, v, segs, ranks, config: dict) -> None:
    """x [T, K], a [slots, L, R, K], v [T, L, R] fp32 (zeroed here if SPLIT_K > 1)."""
    num_slices, max_rank, K = a.shape[1], a.shape[2], a.shape[3]
    split_k, block_k, block_r = config["SPLIT_K"], config["BLOCK_K"], config["BLOCK_R"]
    r_chunks = triton.cdiv(max_rank, block_r)
    # K splits in whole BLOCK_K tiles, so only a split's last tile is ragged
    k_per_split = triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k
    if split_k > 1:
        v.zero_()
    common = dict(
        BLOCK_K=block_k,
        BLOCK_R=block_r,
        SPLIT_K=split_k,
        R_CHUNKS=r_chunks,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    args = (
        x,
        a,
        v,
        segs.seg_indptr,
        segs.seg_slots,
        ranks,
        K,
        k_per_split,
        x.stride(0),
        a.stride(0),
        a.stride(1),
        a.stride(2),
        v.stride(0),
        v.stride(1),
    )
    third = num_slices * split_k * r_chunks
    if config["path"] == "gemv":
        _shrink_gemv_kernel[(segs.num_segments, segs.max_seg_len, third)](*args, **common)
    else:
        grid = (segs.num_segments, triton.cdiv(segs.max_seg_len, config["BLOCK_M"]), third)
        _shrink_tile_kernel[grid](
            *args, BLOCK_M=config["BLOCK_M"], FP32=x.dtype == torch.float32, **common
        )
