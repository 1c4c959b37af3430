"""ATMM fused shrink+expand: y[t, slice s] += c * (x[t] @ a[slot, s, :r]^T) @ b[slot, :r, slice s]
in one kernel, v never written to memory.

Semantics: ``atmm.types`` (same result as ``lora_shrink`` then ``lora_expand``, except that v is
rounded to the weight dtype before the expand's tensor-core product, as the expand does too).

Grid ``(S, cdiv(max_seg_len, BLOCK_M), num_groups)``: output columns are cut per slice into
groups of ``N_TILES`` tiles of BLOCK_N (a group never straddles two slices; ``group_starts``
[num_slices + 1] maps a program to its slice). A program computes v [BLOCK_M, BLOCK_R] of its
rows for its group's slice over the whole K (x and the slot's A streamed in BLOCK_K tiles), then
walks its N_TILES output tiles: [BLOCK_R, BLOCK_N] tiles of B, y read, added to, written.
BLOCK_R is the pool's max rank rounded up to a power of two (rows past the slot's rank are
masked, so they cost no memory traffic). x and A are read once per group, so the fused kernel
pays off when there are few groups per row (narrow N, or decode where launches dominate); the
tuner keeps it only for buckets where it beats shrink + expand (``atmm.config_table``: op "fused").
CUDA-graph safe. Tested: ``test/kernel/test_kernel_correctness.py`` (CPU interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from atmm.ops.expand import slice_tiles


# fmt: off
@triton.jit
def _fused_kernel(
    x_ptr, a_ptr, b_ptr, y_ptr, seg_indptr_ptr, seg_slots_ptr, ranks_ptr, scalings_ptr,
    offsets_ptr, group_starts_ptr, K,
    stride_xt, stride_as, stride_al, stride_ar, stride_bs, stride_br, stride_yt,
    NUM_SLICES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, N_TILES: tl.constexpr, FP32: tl.constexpr,
):
    seg = tl.program_id(0)
    m0 = tl.program_id(1) * BLOCK_M
    start = tl.load(seg_indptr_ptr + seg)
    end = tl.load(seg_indptr_ptr + seg + 1)
    slot = tl.load(seg_slots_ptr + seg)
    rank = tl.load(ranks_ptr + tl.maximum(slot, 0))
    if (slot >= 0) & (start + m0 < end) & (rank > 0):
        group = tl.program_id(2)
        slice_id = 0
        for j in tl.static_range(1, NUM_SLICES):
            slice_id += (group >= tl.load(group_starts_ptr + j)).to(tl.int32)
        col0 = tl.load(offsets_ptr + slice_id) + (group - tl.load(group_starts_ptr + slice_id)) * (
            N_TILES * BLOCK_N
        )
        col_end = tl.load(offsets_ptr + slice_id + 1)
        rows = start + m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < rank
        # ---- shrink: v [BLOCK_M, BLOCK_R] = x rows @ A[slot, slice]^T, fp32 -----------------
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xt
        a_cols = a_ptr + slot.to(tl.int64) * stride_as + slice_id * stride_al
        a_cols += offs_r[None, :] * stride_ar
        offs_k = tl.arange(0, BLOCK_K)
        v = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < K
            x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            a = tl.load(a_cols + ks[:, None], mask=k_ok[:, None] & r_ok[None, :], other=0.0)
            if FP32:
                v += tl.dot(x, a, input_precision="ieee")
            else:
                v += tl.dot(x, a)
        # ---- expand: N_TILES output tiles of this group ----------------------------------
        scale = tl.load(scalings_ptr + slot)
        b_rows = b_ptr + slot.to(tl.int64) * stride_bs + offs_r[:, None] * stride_br
        for j in range(N_TILES):
            cols = col0 + j * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < col_end
            b = tl.load(b_rows + cols[None, :], mask=r_ok[:, None] & col_ok[None, :], other=0.0)
            if FP32:
                acc = tl.dot(v, b, input_precision="ieee")
            else:
                acc = tl.dot(v.to(b.dtype), b)
            y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_yt + cols[None, :]
            mask = row_ok[:, None] & col_ok[None, :]
            y = tl.load(y_ptrs, mask=mask, other=0.0)
            tl.store(y_ptrs, (y.to(tl.float32) + scale * acc).to(y.dtype), mask=mask)
# fmt: on


def launch_fused(x, w, y, segs, config: dict) -> None:
    """x [T, K], y [T, N] (updated in place), pool ``w`` (``atmm.types.LoRAWeights``)."""
    block_n, n_tiles = config["BLOCK_N"], config["N_TILES"]
    offsets_t, group_starts, num_groups = slice_tiles(w.slice_offsets, block_n * n_tiles, y.device)
    grid = (segs.num_segments, triton.cdiv(segs.max_seg_len, config["BLOCK_M"]), num_groups)
    _fused_kernel[grid](
        x,
        w.a,
        w.b,
        y,
        segs.seg_indptr,
        segs.seg_slots,
        w.ranks,
        w.scalings,
        offsets_t,
        group_starts,
        w.in_features,
        x.stride(0),
        w.a.stride(0),
        w.a.stride(1),
        w.a.stride(2),
        w.b.stride(0),
        w.b.stride(1),
        y.stride(0),
        NUM_SLICES=w.num_slices,
        BLOCK_M=config["BLOCK_M"],
        BLOCK_N=block_n,
        BLOCK_K=config["BLOCK_K"],
        BLOCK_R=max(16, triton.next_power_of_2(w.max_rank)),
        N_TILES=n_tiles,
        FP32=y.dtype == torch.float32,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
