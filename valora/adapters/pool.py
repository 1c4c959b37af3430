"""GPU adapter pool: adapters packed by rank rows, LRU eviction, pins, prefetch on a side stream.

Layout, per target (``valora.adapters.targets``), K = in_features, N = out_features, C = capacity
in rank rows, R = max_rank:

    a_buf:    [num_layers, num_slices, C + R, K]
    b_buf:    [num_layers, C + R, N]
    ranks:    [num_layers, C] int32     rank of the module at the adapter's first row, else 0
    scalings: [num_layers, C] fp32      (and its negation, for mixture-mode corrections)

A resident adapter of rank r owns rows [o, o + r) of every target; its *slot* is o. The kernels
see each (target, layer) as ``atmm.LoRAWeights`` whose slot stride is one row (a strided view
over the buffers), so a rank-8 adapter takes 8 rows next to a rank-64 one: no padding to the
maximum rank. The R spare rows at the end only let the last slot's view stay in bounds.

Invariants
- ``resident`` maps each adapter key to its rows; rows of different residents never overlap.
- An adapter with pins > 0 (scheduled requests, or merged into the base) is never evicted.
- A copy made on the side stream is waited for before any forward uses the adapter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from atmm.types import LoRAWeights
from valora.adapters.targets import TargetSpec
from valora.adapters.types import LoRAAdapter

AdapterKey = tuple[str, int]  # (name, version)


class RowAllocator:
    """First-fit allocation of contiguous row ranges in [0, capacity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free: list[tuple[int, int]] = [(0, capacity)]  # sorted (start, length)

    def allocate(self, num_rows: int) -> int | None:
        for i, (start, length) in enumerate(self.free):
            if length >= num_rows:
                if length == num_rows:
                    del self.free[i]
                else:
                    self.free[i] = (start + num_rows, length - num_rows)
                return start
        return None

    def release(self, start: int, num_rows: int) -> None:
        self.free.append((start, num_rows))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for s, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        self.free = merged

    @property
    def num_free(self) -> int:
        return sum(n for _, n in self.free)


@dataclass
class Resident:
    slot: int
    num_rows: int
    pins: int = 0
    ready: torch.cuda.Event | None = None  # set when copied on the side stream


@dataclass
class PoolStats:
    loads: int = 0
    evictions: int = 0
    prefetches: int = 0
    load_seconds: float = 0.0  # host time spent issuing loads (copies may run asynchronously)


class TargetBuffers:
    """The pool tensors of one target and the per-layer ``LoRAWeights`` views over them."""

    def __init__(self, spec: TargetSpec, capacity: int, max_rank: int, dtype, device) -> None:
        self.spec = spec
        layers, slices, rows = spec.num_layers, len(spec.slice_sizes), capacity + max_rank
        k, n = spec.in_features, spec.out_features
        self.a_buf = torch.zeros(layers, slices, rows, k, dtype=dtype, device=device)
        self.b_buf = torch.zeros(layers, rows, n, dtype=dtype, device=device)
        self.ranks = torch.zeros(layers, capacity, dtype=torch.int32, device=device)
        self.scalings = torch.zeros(layers, capacity, dtype=torch.float32, device=device)
        self.neg_scalings = torch.zeros_like(self.scalings)
        self.weights = [self._view(i, capacity, max_rank, self.scalings) for i in range(layers)]
        self.neg_weights = [
            self._view(i, capacity, max_rank, self.neg_scalings) for i in range(layers)
        ]

    def _view(self, layer: int, capacity: int, max_rank: int, scalings) -> LoRAWeights:
        a, b = self.a_buf[layer], self.b_buf[layer]  # [L, C + R, K], [C + R, N]
        k, n, slices = a.shape[2], b.shape[1], a.shape[0]
        a_view = a.as_strided((capacity, slices, max_rank, k), (k, a.stride(0), k, 1))
        b_view = b.as_strided((capacity, max_rank, n), (n, n, 1))
        return LoRAWeights(
            a_view, b_view, self.ranks[layer], scalings[layer], self.spec.slice_offsets
        )

    def write(self, slot: int, adapter: LoRAAdapter) -> None:
        """Copy the adapter's modules of this target into rows from ``slot`` (current stream)."""
        layers = self.spec.num_layers
        ranks, scalings = [0] * layers, [0.0] * layers
        for layer in range(layers):
            module = adapter.modules.get((self.spec.name, layer))
            if module is None:
                continue
            r = module.rank
            self.a_buf[layer, :, slot : slot + r].copy_(module.a, non_blocking=True)
            self.b_buf[layer, slot : slot + r].copy_(module.b, non_blocking=True)
            ranks[layer], scalings[layer] = r, module.scaling
        device = self.ranks.device
        self.ranks[:, slot].copy_(torch.tensor(ranks, dtype=torch.int32), non_blocking=False)
        self.scalings[:, slot].copy_(torch.tensor(scalings, dtype=torch.float32).to(device))
        self.neg_scalings[:, slot].copy_(-self.scalings[:, slot])

    def clear(self, slot: int) -> None:
        self.ranks[:, slot] = 0


class AdapterPool:
    """Which adapters are on the GPU and where; loads, evicts (LRU among unpinned), prefetches."""

    def __init__(
        self,
        targets: tuple[TargetSpec, ...],
        capacity_rows: int,
        max_rank: int,
        dtype: torch.dtype,
        device: str | torch.device,
    ) -> None:
        self.device = torch.device(device)
        self.max_rank = max_rank
        self.targets = {
            t.name: TargetBuffers(t, capacity_rows, max_rank, dtype, self.device) for t in targets
        }
        self.allocator = RowAllocator(capacity_rows)
        self.resident: OrderedDict[AdapterKey, Resident] = OrderedDict()  # LRU order
        self.stats = PoolStats()
        self.version = 0  # bumped whenever rows change owner (backends re-prepare)
        cuda = self.device.type == "cuda"
        self._side_stream = torch.cuda.Stream(self.device) if cuda else None

    # ---- queries --------------------------------------------------------------------------
    def slot(self, key: AdapterKey) -> int:
        return self.resident[key].slot

    def is_resident(self, key: AdapterKey) -> bool:
        return key in self.resident

    def can_acquire(self, key: AdapterKey, rank: int) -> bool:
        """Could ``acquire`` succeed, evicting unpinned adapters if needed?"""
        if key in self.resident:
            return True
        return self._fits_after_evicting(max(rank, 1))

    def _fits_after_evicting(self, num_rows: int) -> bool:
        alloc = RowAllocator(self.allocator.capacity)
        alloc.free = list(self.allocator.free)
        for r in self.resident.values():
            if r.pins == 0:
                alloc.release(r.slot, r.num_rows)
        return any(n >= num_rows for _, n in alloc.free)

    # ---- pins -----------------------------------------------------------------------------
    def acquire(self, key: AdapterKey, adapter: LoRAAdapter) -> int:
        """Pin the adapter (loading it, evicting LRU unpinned adapters if needed); its slot.
        Raises RuntimeError when pinned adapters leave no room (check ``can_acquire``)."""
        entry = self.resident.get(key)
        if entry is None:
            entry = self._load(key, adapter)
        elif entry.ready is not None:  # prefetched on the side stream
            torch.cuda.current_stream(self.device).wait_event(entry.ready)
            entry.ready = None
        entry.pins += 1
        self.resident.move_to_end(key)
        return entry.slot

    def release(self, key: AdapterKey) -> None:
        entry = self.resident[key]
        if entry.pins <= 0:
            raise RuntimeError(f"adapter {key} released more often than acquired")
        entry.pins -= 1

    def prefetch(self, key: AdapterKey, adapter: LoRAAdapter) -> bool:
        """Start copying an adapter into free rows on the side stream (never evicts); the first
        ``acquire`` makes the compute stream wait for the copy. On the CPU: a plain load."""
        if key in self.resident:
            return False
        slot = self.allocator.allocate(max(adapter.rank, 1))
        if slot is None:
            return False
        self._load(key, adapter, slot, self._side_stream)
        self.stats.prefetches += 1
        return True

    def evict_unpinned(self) -> None:
        """Drop every unpinned adapter (frees rows; used when an adapter is unloaded)."""
        for key in [k for k, r in self.resident.items() if r.pins == 0]:
            self._evict(key)

    def drop(self, key: AdapterKey) -> bool:
        """Evict one adapter if resident and unpinned; False if pinned."""
        entry = self.resident.get(key)
        if entry is None:
            return True
        if entry.pins:
            return False
        self._evict(key)
        return True

    # ---- loading --------------------------------------------------------------------------
    def _allocate(self, num_rows: int) -> int:
        """Rows for a new adapter, evicting least recently used unpinned adapters as needed."""
        slot = self.allocator.allocate(num_rows)
        while slot is None:
            victim = next((k for k, r in self.resident.items() if r.pins == 0), None)
            if victim is None:
                raise RuntimeError(
                    f"adapter pool full: {num_rows} rows needed, every resident adapter is in use"
                )
            self._evict(victim)
            slot = self.allocator.allocate(num_rows)
        return slot

    def _evict(self, key: AdapterKey) -> None:
        entry = self.resident.pop(key)
        if entry.ready is not None:
            entry.ready.synchronize()
        for buffers in self.targets.values():
            buffers.clear(entry.slot)
        self.allocator.release(entry.slot, entry.num_rows)
        self.stats.evictions += 1
        self.version += 1

    def _load(self, key, adapter: LoRAAdapter, slot: int | None = None, stream=None) -> Resident:
        start = time.perf_counter()
        num_rows = max(adapter.rank, 1)
        if adapter.rank > self.max_rank:
            raise ValueError(f"adapter rank {adapter.rank} exceeds max_lora_rank {self.max_rank}")
        slot = self._allocate(num_rows) if slot is None else slot
        entry = Resident(slot, num_rows)
        if stream is None:
            self._write(slot, adapter)
        else:
            stream.wait_stream(torch.cuda.current_stream(self.device))  # rows free for reuse
            with torch.cuda.stream(stream):
                self._write(slot, adapter)
                entry.ready = torch.cuda.Event()
                entry.ready.record(stream)
        self.resident[key] = entry
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - start
        self.version += 1
        return entry

    def _write(self, slot: int, adapter: LoRAAdapter) -> None:
        for buffers in self.targets.values():
            buffers.write(slot, adapter)
