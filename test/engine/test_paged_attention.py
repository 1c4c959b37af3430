"""Paged attention (torch) against plain causal attention over whole sequences: random block
tables, chunked prefill across block boundaries, decode steps, GQA."""

from __future__ import annotations

import random

import torch

from valora.layers.attention import varlen_attention
from valora.layers.paged_attention import (
    KVCache,
    PagedAttentionMetadata,
    TorchPagedAttention,
)

HQ, HKV, D, BS = 4, 2, 16, 4


def test_chunked_and_decode_steps_match_unpaged_attention():
    torch.manual_seed(0)
    rng = random.Random(0)
    lengths = [1, 7, 13, 21]
    q_full = [torch.randn(n, HQ, D) for n in lengths]
    k_full = [torch.randn(n, HKV, D) for n in lengths]
    v_full = [torch.randn(n, HKV, D) for n in lengths]
    scale = D**-0.5
    expected = [
        varlen_attention(q, k, v, (len(q),), causal=True, scale=scale)
        for q, k, v in zip(q_full, k_full, v_full)
    ]
    cache = KVCache(1, 64, BS, HKV, D, torch.float32, "cpu")
    free = list(range(64))
    rng.shuffle(free)  # non-contiguous, shuffled blocks
    tables = [[free.pop() for _ in range(-(-n // BS))] for n in lengths]
    backend = TorchPagedAttention(cache)
    done = [0] * len(lengths)
    results = [[] for _ in lengths]
    while any(d < n for d, n in zip(done, lengths)):
        active = [i for i, n in enumerate(lengths) if done[i] < n]
        chunks = [min(rng.choice([1, 3, 5]), lengths[i] - done[i]) for i in active]
        meta = PagedAttentionMetadata.build(
            chunks,
            [done[i] + c for i, c in zip(active, chunks)],
            [tables[i] for i in active],
            BS,
            "cpu",
        )
        sl = [slice(done[i], done[i] + c) for i, c in zip(active, chunks)]
        q = torch.cat([q_full[i][s] for i, s in zip(active, sl)])
        k = torch.cat([k_full[i][s] for i, s in zip(active, sl)])
        v = torch.cat([v_full[i][s] for i, s in zip(active, sl)])
        out = backend(0, q, k, v, meta).view(-1, HQ, D)
        for i, piece in zip(active, out.split(chunks)):
            results[i].append(piece)
        for i, c in zip(active, chunks):
            done[i] += c
    for got, want in zip(results, expected):
        torch.testing.assert_close(torch.cat(got), want, rtol=1e-5, atol=1e-5)


def test_metadata_slots_follow_block_tables():
    meta = PagedAttentionMetadata.build([2, 1], [5, 3], [[7, 2], [4]], 4, "cpu")
    # seq 0 positions 3, 4 -> block 7 offset 3, block 2 offset 0; seq 1 position 2 -> block 4
    assert meta.slot_mapping.tolist() == [7 * 4 + 3, 2 * 4 + 0, 4 * 4 + 2]
    assert meta.query_start.tolist() == [0, 2, 3]
    assert meta.block_tables.tolist() == [[7, 2], [4, 0]]
