"""Paged KV cache and paged attention (torch implementation, the reference and the CPU path).

KV cache layout, per layer: ``k_cache[layer]``, ``v_cache[layer]``:
``[num_blocks, block_size, num_kv_heads, head_dim]``. Token t of a sequence lives in block
``block_table[t // block_size]`` at offset ``t % block_size``; its *slot* is
``block * block_size + offset``.

One step's batch is flattened: sequence i contributes ``query_lens[i]`` new tokens (a prefill
chunk, or 1 for decode) whose KV is written to ``slot_mapping`` first; then every new token
attends causally to all ``context_lens[i]`` tokens of its sequence (cached prefix + new ones):
new token j of sequence i sits at position ``context_lens[i] - query_lens[i] + j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from valora.layers.attention import token_major_sdpa


@dataclass(frozen=True)
class PagedAttentionMetadata:
    query_lens: tuple[int, ...]  # new tokens per sequence (host copy)
    context_lens: tuple[int, ...]  # KV tokens per sequence after this step (host copy)
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    query_start: torch.Tensor  # [B + 1] int32: CSR offsets of each sequence's new tokens
    context_lens_tensor: torch.Tensor  # [B] int32

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str,
    ) -> PagedAttentionMetadata:
        if any(q <= 0 or q > c for q, c in zip(query_lens, context_lens)):
            raise ValueError("each sequence needs 1 <= query_len <= context_len")
        slots = slot_mapping(query_lens, context_lens, block_tables, block_size)
        return cls.from_arrays(
            query_lens, context_lens, slots, padded_block_tables(block_tables), device
        )

    @classmethod
    def from_arrays(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        slots: np.ndarray,
        block_tables: np.ndarray,
        device: torch.device | str,
    ) -> PagedAttentionMetadata:
        """From host arrays: slots [T] int64, block_tables [B, width] int32."""
        starts = np.zeros(len(query_lens) + 1, dtype=np.int32)
        np.cumsum(query_lens, out=starts[1:])
        return cls(
            query_lens=tuple(query_lens),
            context_lens=tuple(context_lens),
            slot_mapping=torch.from_numpy(slots).to(device),
            block_tables=torch.from_numpy(block_tables).to(device),
            query_start=torch.from_numpy(starts).to(device),
            context_lens_tensor=torch.tensor(context_lens, dtype=torch.int32, device=device),
        )

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)


def slot_mapping(
    query_lens: list[int], context_lens: list[int], block_tables: list[list[int]], block_size: int
) -> np.ndarray:
    """[sum(query_lens)] int64: the cache slot of each new token (positions c - q .. c - 1)."""
    parts = []
    for q, c, table in zip(query_lens, context_lens, block_tables):
        if q == 1:  # decode: one slot, no array ops
            pos = c - 1
            parts.append((table[pos // block_size] * block_size + pos % block_size,))
            continue
        pos = np.arange(c - q, c)
        parts.append(
            np.asarray(table, dtype=np.int64)[pos // block_size] * block_size + pos % block_size
        )
    if all(len(p) == 1 for p in parts):
        return np.array([p[0] for p in parts], dtype=np.int64)
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def padded_block_tables(block_tables: list[list[int]], width: int | None = None) -> np.ndarray:
    """[B, width] int32 (default width: the longest table), padded with block 0."""
    width = width or max(1, max(len(t) for t in block_tables))
    out = np.zeros((len(block_tables), width), dtype=np.int32)
    for row, table in zip(out, block_tables):
        row[: len(table)] = table
    return out


class KVCache:
    """Per-layer K and V block pools of ``num_blocks`` blocks for the block manager, plus one
    scratch block no sequence owns: padded rows of a CUDA-graph batch write their K/V to
    ``scratch_slot``, so padding never changes a sequence's cache."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.scratch_block = num_blocks
        self.scratch_slot = num_blocks * block_size

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).itemsize

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """k, v: [T, Hkv, D] -> their slots in this layer's pools."""
        self.k[layer].view(-1, *k.shape[1:])[slots] = k.to(self.k.dtype)
        self.v[layer].view(-1, *v.shape[1:])[slots] = v.to(self.v.dtype)

    def gather(self, layer: int, block_table: torch.Tensor, length: int):
        """The first ``length`` cached tokens of one sequence: (k, v), each [length, Hkv, D]."""
        num_blocks = -(-length // self.block_size)
        blocks = block_table[:num_blocks].long()
        k = self.k[layer][blocks].flatten(0, 1)[:length]
        v = self.v[layer][blocks].flatten(0, 1)[:length]
        return k, v


def paged_attention_reference(
    q: torch.Tensor,
    kv_cache: KVCache,
    layer: int,
    meta: PagedAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [T, Hq, D] (new tokens, KV already written) -> out [T, Hq, D], per-sequence SDPA."""
    outputs = []
    for i, q_seq in enumerate(q.split(meta.query_lens)):
        n, ctx = meta.query_lens[i], meta.context_lens[i]
        k, v = kv_cache.gather(layer, meta.block_tables[i], ctx)
        mask = None
        if n > 1:  # new token j may see keys up to position ctx - n + j
            key_pos = torch.arange(ctx, device=q.device)
            query_pos = torch.arange(ctx - n, ctx, device=q.device)
            mask = key_pos[None, :] <= query_pos[:, None]  # [n, ctx]
        outputs.append(token_major_sdpa(q_seq, k.to(q.dtype), v.to(q.dtype), scale, mask=mask))
    return torch.cat(outputs, dim=0)


class TorchPagedAttention:
    """Attention backend over the paged cache (CPU path): write new K/V, then attend."""

    graph_safe = False  # slices by the host-side context lengths

    def __init__(self, kv_cache: KVCache) -> None:
        self.kv_cache = kv_cache

    def __call__(self, layer_id, q, k, v, meta: PagedAttentionMetadata) -> torch.Tensor:
        self.kv_cache.write(layer_id, k, v, meta.slot_mapping)
        scale = q.shape[-1] ** -0.5
        return paged_attention_reference(q, self.kv_cache, layer_id, meta, scale).flatten(1)
