"""The GPU pool's bookkeeping on the CPU: row allocation, pins, LRU eviction, prefetch, stats."""

from __future__ import annotations

import pytest
import torch

from valora.adapters.peft_loader import dummy_adapter
from valora.adapters.pool import AdapterPool, RowAllocator
from valora.adapters.targets import model_targets
from valora.config import ModelConfig

CFG = ModelConfig.from_setting("tiny")


def test_row_allocator_first_fit_and_coalescing():
    alloc = RowAllocator(100)
    a, b, c = alloc.allocate(30), alloc.allocate(30), alloc.allocate(30)
    assert (a, b, c) == (0, 30, 60) and alloc.allocate(20) is None
    alloc.release(a, 30)
    alloc.release(c, 30)
    assert alloc.allocate(40) == 60  # 60..100 after coalescing with the tail
    alloc.release(b, 30)
    assert alloc.free == [(0, 60)] and alloc.num_free == 60


def make_pool(capacity_rows: int) -> AdapterPool:
    return AdapterPool(model_targets(CFG), capacity_rows, 32, torch.float32, "cpu")


def adapters(*ranks):
    return [((f"a{i}", 1), dummy_adapter(f"a{i}", CFG, r, seed=i)) for i, r in enumerate(ranks)]


def test_packed_rows_hold_each_adapter_exactly():
    pool = make_pool(64)
    loaded = adapters(8, 16, 32, 8)
    slots = [pool.acquire(key, a) for key, a in loaded]
    assert slots == [0, 8, 24, 56]  # back to back: no padding to the max rank
    for (_, adapter), slot in zip(loaded, slots):
        for (target, layer), module in adapter.modules.items():
            w = pool.targets[target].weights[layer]
            r = module.rank
            assert int(w.ranks[slot]) == r and float(w.scalings[slot]) == module.scaling
            assert torch.equal(w.a[slot, :, :r], module.a) and torch.equal(w.b[slot, :r], module.b)


def test_pins_block_eviction_and_lru_picks_the_victim():
    pool = make_pool(48)
    (k0, a0), (k1, a1) = adapters(16, 16)
    pool.acquire(k0, a0)
    pool.acquire(k1, a1)
    pool.release(k0)
    pool.release(k1)
    pool.acquire(k0, a0)  # k0 used again: k1 is now least recently used
    pool.release(k0)
    (k3, a3) = adapters(16, 16, 16, 32)[3]
    assert pool.can_acquire(k3, 32)
    pool.acquire(k3, a3)  # needs 32 rows: evicts the least recently used unpinned adapters
    assert not pool.is_resident(k1) and pool.stats.evictions >= 1
    assert pool.slot(k3) + 32 <= 48
    pool.release(k3)


def test_full_pool_of_pinned_adapters_refuses():
    pool = make_pool(32)
    (k0, a0), (k1, a1) = adapters(32, 8)
    pool.acquire(k0, a0)
    assert not pool.can_acquire(k1, 8)
    with pytest.raises(RuntimeError, match="every resident adapter is in use"):
        pool.acquire(k1, a1)
    pool.release(k0)
    assert pool.can_acquire(k1, 8)
    pool.acquire(k1, a1)
    assert pool.stats.loads == 2 and pool.stats.evictions == 1
    pool.release(k1)
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release(k1)


def test_prefetch_uses_free_rows_only():
    pool = make_pool(40)
    (k0, a0), (k1, a1), (k2, a2) = adapters(32, 8, 8)
    pool.acquire(k0, a0)
    pool.release(k0)
    assert pool.prefetch(k1, a1)  # 8 free rows
    assert not pool.prefetch(k2, a2)  # no free rows left: prefetch never evicts
    assert pool.is_resident(k0) and pool.stats.prefetches == 1
    assert pool.acquire(k1, a1) == 32  # the prefetched copy is used, not loaded again
    assert pool.stats.loads == 2
