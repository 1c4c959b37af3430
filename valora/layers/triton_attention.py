"""Paged attention in Triton: the semantics of ``paged_attention_reference`` as GPU kernels.

Computes, for a flattened batch of new tokens ``q [T, Hq, D]`` whose K/V are already in the
paged cache (per layer ``[num_blocks, block_size, Hkv, D]``), causal attention of new token j of
sequence i (at position ``context_lens[i] - query_lens[i] + j``) over that sequence's cached
keys at positions <= its own, read through the block table. fp32 softmax and accumulation.

Paths (chosen once per call from the host tuples, no device->host sync):

- decode (every query_len == 1): split-KV. Grid ``(B, Hkv, num_splits)``, num_splits from the
  batch shape alone (CUDA-graph safe): one program per sequence, KV head and range of that
  sequence's ``_split_len`` tokens (context / num_splits, >= MIN_SPLIT); the whole GQA group of
  query heads is one ``[BLOCK_H, D]`` tile, so each K/V tile is loaded once per group. Each
  program writes a partial normalized output and its log2-sum-exp to fp32 scratch
  ``[B, Hq, num_splits, (D)]``; a reduce kernel (grid ``(B, Hq)``) combines the valid splits of
  each sequence.
- extend (any query_len > 1; the whole batch, decode rows included): flash-attention style.
  Grid ``(B, Hq, cdiv(max_query_len, BLOCK_M))``: one program per tile of BLOCK_M new tokens of
  one sequence and one query head, looping over KV tiles up to the tile's causal limit. Tiles
  past a sequence's query_len exit at once. GQA reuse of K/V across heads is left to the L2.

Tested: against ``paged_attention_reference`` in fp32/fp16 under the CPU interpreter
(``TRITON_INTERPRET=1``; small dims, block sizes 4/16, D 16/24/32); the GPU tests (bf16/fp16,
D=128, long contexts) live in test/kernel/test_paged_attention_triton.py.
Limits: head_dim <= 256 (padded to a power of two >= 16 with masks; 64/128 are the real cases);
q fp16/bf16/fp32, K/V converted to q's dtype per tile (as the reference does); K and V layer
views must share strides and have a contiguous last dim. Requires triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from valora.layers.paged_attention import KVCache, PagedAttentionMetadata
from valora.layers.triton_kernels import write_kv_cache

_LOG2E = 1.4426950408889634
_MIN_SPLIT_TOKENS = 128  # fewer tokens per split than this is not worth a reduce
_MAX_SPLITS = 32


# fmt: off
@triton.jit
def _kv_offsets(tables_ptr, pos, valid, kv_head, stride_b, stride_s, stride_h, BLOCK_SIZE):
    """Row offsets [BLOCK_N] into a layer's cache of the tokens at ``pos`` (one sequence)."""
    block = tl.load(tables_ptr + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    return block * stride_b + (pos % BLOCK_SIZE) * stride_s + kv_head * stride_h
# fmt: on


# fmt: off
@triton.jit
def _split_len(ctx, num_splits, MIN_SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tokens per split of one sequence: ctx / num_splits, at least MIN_SPLIT, rounded up to a
    multiple of BLOCK_N (only a split's last tile is ragged). Splits past ctx have no work."""
    per_split = tl.maximum(tl.cdiv(ctx, num_splits), MIN_SPLIT)
    return tl.cdiv(per_split, BLOCK_N) * BLOCK_N
# fmt: on


# fmt: off
@triton.jit
def _online_softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale):
    """One KV tile of flash attention: scores in log2 units, running max/sum/accumulator."""
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee") * qk_scale
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    pv = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee")
    return m_new, l_i, acc * alpha[:, None] + pv
# fmt: on


# fmt: off
@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, ctx_ptr, part_acc_ptr, part_lse_ptr,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
    qk_scale, num_splits,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MIN_SPLIT: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(ctx_ptr + seq)
    split_len = _split_len(ctx, num_splits, MIN_SPLIT, BLOCK_N)
    start = split * split_len
    if start < ctx:
        end = tl.minimum(start + split_len, ctx)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        heads = kv_head * GROUP + offs_h
        mask_h = offs_h < GROUP
        mask_d = offs_d < HEAD_DIM
        mask_hd = mask_h[:, None] & mask_d[None, :]
        q_off = seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptr + q_off, mask=mask_hd, other=0.0)  # [BLOCK_H, BLOCK_D]
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            pos = n0 + offs_n
            valid = pos < end
            rows = _kv_offsets(
                tables_ptr + seq * stride_tb, pos, valid, kv_head,
                stride_kb, stride_ks, stride_kh, BLOCK_SIZE,
            )
            mask_nd = valid[:, None] & mask_d[None, :]
            k = tl.load(k_ptr + rows[:, None] + offs_d[None, :], mask=mask_nd, other=0.0)
            v = tl.load(v_ptr + rows[:, None] + offs_d[None, :], mask=mask_nd, other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, k, v, valid[None, :], m_i, l_i, acc, qk_scale)
        p_off = seq * stride_pb + heads * stride_ph + split * stride_ps
        tl.store(part_acc_ptr + p_off[:, None] + offs_d[None, :], acc / l_i[:, None], mask=mask_hd)
        l_off = seq * stride_lb + heads * stride_lh + split
        tl.store(part_lse_ptr + l_off, m_i + tl.log2(l_i), mask=mask_h)
# fmt: on


# fmt: off
@triton.jit
def _decode_reduce_kernel(
    part_acc_ptr, part_lse_ptr, ctx_ptr, out_ptr,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ot, stride_oh,
    num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MIN_SPLIT: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    ctx = tl.load(ctx_ptr + seq)
    num_valid = tl.cdiv(ctx, _split_len(ctx, num_splits, MIN_SPLIT, BLOCK_N))  # >= 1
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    m = float("-inf")
    total = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for split in range(0, num_valid):
        lse = tl.load(part_lse_ptr + seq * stride_lb + head * stride_lh + split)
        p_off = seq * stride_pb + head * stride_ph + split * stride_ps
        part = tl.load(part_acc_ptr + p_off + offs_d, mask=mask_d, other=0.0)
        m_new = tl.maximum(m, lse)
        alpha = tl.exp2(m - m_new)
        weight = tl.exp2(lse - m_new)
        acc = acc * alpha + part * weight
        total = total * alpha + weight
        m = m_new
    out = acc / total
    o_off = seq * stride_ot + head * stride_oh + offs_d
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=mask_d)
# fmt: on


# fmt: off
@triton.jit
def _extend_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, ctx_ptr, qstart_ptr,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb, stride_ot, stride_oh,
    qk_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    q_begin = tl.load(qstart_ptr + seq)
    q_len = tl.load(qstart_ptr + seq + 1) - q_begin
    if m0 < q_len:
        ctx = tl.load(ctx_ptr + seq)
        kv_head = head // GROUP
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        mask_d = offs_d < HEAD_DIM
        mask_md = (offs_m < q_len)[:, None] & mask_d[None, :]
        q_pos = ctx - q_len + offs_m  # [BLOCK_M] positions; rows past q_len are never stored
        tokens = (q_begin + offs_m).to(tl.int64)
        q_off = tokens[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
        q = tl.load(q_ptr + q_off, mask=mask_md, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        kv_end = tl.minimum(ctx, ctx - q_len + m0 + BLOCK_M)  # causal limit of the tile's last row
        for n0 in range(0, kv_end, BLOCK_N):
            pos = n0 + offs_n
            in_range = pos < kv_end
            rows = _kv_offsets(
                tables_ptr + seq * stride_tb, pos, in_range, kv_head,
                stride_kb, stride_ks, stride_kh, BLOCK_SIZE,
            )
            mask_nd = in_range[:, None] & mask_d[None, :]
            k = tl.load(k_ptr + rows[:, None] + offs_d[None, :], mask=mask_nd, other=0.0)
            v = tl.load(v_ptr + rows[:, None] + offs_d[None, :], mask=mask_nd, other=0.0)
            valid = in_range[None, :] & (pos[None, :] <= q_pos[:, None])  # key 0 always valid
            m_i, l_i, acc = _online_softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale)
        o_off = tokens[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
        out = acc / l_i[:, None]
        tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=mask_md)
# fmt: on


def _check_inputs(q, k_cache, v_cache, meta: PagedAttentionMetadata) -> None:
    if q.dim() != 3 or k_cache.dim() != 4:
        raise ValueError(f"need q [T, Hq, D] and a 4-D cache layer, got {q.shape}, {k_cache.shape}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("k and v cache layers must have the same shape and strides")
    if k_cache.stride(-1) != 1:
        raise ValueError("cache layers need a contiguous head_dim")
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or head_dim > 256:
        raise ValueError(f"head_dim {head_dim} vs cache {k_cache.shape[3]} (at most 256)")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"unsupported q dtype {q.dtype}")
    if k_cache.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"unsupported cache dtype {k_cache.dtype}")
    if num_tokens != sum(meta.query_lens):
        raise ValueError(f"q has {num_tokens} tokens, query_lens sum to {sum(meta.query_lens)}")
    if not len(meta.context_lens) == len(meta.query_lens) == meta.block_tables.shape[0]:
        raise ValueError("query_lens, context_lens and block_tables disagree on the batch size")
    if any(not 1 <= n <= c for n, c in zip(meta.query_lens, meta.context_lens)):
        raise ValueError("each sequence needs 1 <= query_len <= context_len")
    if q.device != k_cache.device or meta.block_tables.device != q.device:
        raise ValueError("q, cache and metadata must be on one device")


def _tiles(device: torch.device, head_dim: int) -> dict[str, int]:
    """Tile sizes and launch options: GPU sizes for D <= 128, small ones for the interpreter."""
    if device.type != "cuda":  # interpreter: tiny splits, so that small tests split
        return {"BLOCK_M": 16, "BLOCK_N": 16, "MIN_SPLIT": 16, "num_warps": 4, "num_stages": 1}
    if head_dim <= 128:
        return {
            "BLOCK_M": 64,
            "BLOCK_N": 64,
            "MIN_SPLIT": _MIN_SPLIT_TOKENS,
            "num_warps": 4,
            "num_stages": 2,
        }
    return {
        "BLOCK_M": 32,
        "BLOCK_N": 32,
        "MIN_SPLIT": _MIN_SPLIT_TOKENS,
        "num_warps": 4,
        "num_stages": 2,
    }


def num_kv_splits_for(batch: int, num_kv_heads: int, device: torch.device) -> int:
    """Decode splits per sequence: enough (sequence, kv head, split) programs to fill the GPU
    twice. Depends on the batch shape only (not on context lengths), so a CUDA graph captured
    for a batch size stays right for any lengths; short sequences use fewer splits
    (``_split_len``)."""
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    return max(1, min(triton.cdiv(target, batch * num_kv_heads), _MAX_SPLITS))


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
    out: torch.Tensor | None = None,
    num_kv_splits: int | None = None,
) -> torch.Tensor:
    """q [T, Hq, D] (KV already written), cache layers [num_blocks, block_size, Hkv, D] ->
    out [T, Hq, D] in q's dtype. ``num_kv_splits`` overrides the decode split heuristic."""
    _check_inputs(q, k_cache, v_cache, meta)
    if q.stride(-1) != 1:
        q = q.contiguous()
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with a contiguous last dim")
    if num_tokens == 0:
        return out
    batch = len(meta.query_lens)
    max_query_len = max(meta.query_lens)
    tiles = _tiles(q.device, head_dim)
    common = {
        "HEAD_DIM": head_dim,
        "GROUP": num_q_heads // num_kv_heads,
        "BLOCK_SIZE": block_size,
        "BLOCK_N": tiles["BLOCK_N"],
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "num_warps": tiles["num_warps"],
        "num_stages": tiles["num_stages"],
    }
    args = (q, k_cache, v_cache, meta, scale * _LOG2E, out, common)
    if max_query_len == 1:
        splits = num_kv_splits or num_kv_splits_for(batch, num_kv_heads, q.device)
        _launch_decode(*args, batch, splits, tiles["MIN_SPLIT"])
    else:
        _launch_extend(*args, batch, max_query_len, tiles["BLOCK_M"])
    return out


def _launch_decode(q, k_cache, v_cache, meta, qk_scale, out, common, batch, splits, min_split):
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    part_acc = torch.empty(
        batch, num_q_heads, splits, head_dim, dtype=torch.float32, device=q.device
    )
    part_lse = torch.empty(batch, num_q_heads, splits, dtype=torch.float32, device=q.device)
    block_h = max(16, triton.next_power_of_2(common["GROUP"]))
    _decode_split_kernel[(batch, k_cache.shape[2], splits)](
        q,
        k_cache,
        v_cache,
        meta.block_tables,
        meta.context_lens_tensor,
        part_acc,
        part_lse,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        meta.block_tables.stride(0),
        *part_acc.stride()[:3],
        *part_lse.stride()[:2],
        qk_scale,
        splits,
        BLOCK_H=block_h,
        MIN_SPLIT=min_split,
        **common,
    )
    _decode_reduce_kernel[(batch, num_q_heads)](
        part_acc,
        part_lse,
        meta.context_lens_tensor,
        out,
        *part_acc.stride()[:3],
        *part_lse.stride()[:2],
        out.stride(0),
        out.stride(1),
        splits,
        HEAD_DIM=head_dim,
        BLOCK_D=common["BLOCK_D"],
        BLOCK_N=common["BLOCK_N"],
        MIN_SPLIT=min_split,
        num_warps=common["num_warps"],
    )


def _launch_extend(q, k_cache, v_cache, meta, qk_scale, out, common, batch, max_q, block_m):
    grid = (batch, q.shape[1], triton.cdiv(max_q, block_m))
    _extend_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        meta.block_tables,
        meta.context_lens_tensor,
        meta.query_start,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        meta.block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        qk_scale,
        BLOCK_M=block_m,
        **common,
    )


class TritonPagedAttention:
    """Attention backend over the paged cache with the Triton kernels (same call shape as
    ``TorchPagedAttention``): write the new K/V into the cache, then attend."""

    graph_safe = True  # reads lengths from device tensors only (decode launch shape: batch only)

    def __init__(self, kv_cache: KVCache) -> None:
        self.kv_cache = kv_cache

    def __call__(self, layer_id, q, k, v, meta: PagedAttentionMetadata) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq * D]."""
        k_cache, v_cache = self.kv_cache.k[layer_id], self.kv_cache.v[layer_id]
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        scale = q.shape[-1] ** -0.5
        return paged_attention(q, k_cache, v_cache, meta, scale).flatten(1)
