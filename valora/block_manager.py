"""KV-cache blocks: free list, reference counts, adapter-aware prefix cache, LRU eviction.

Imports no torch. The manager hands out block ids; the KV tensors live in the model runner.

Invariants
- Every block is in exactly one state: *free* (ref 0, no hash, in ``_free``), *cached-idle*
  (ref 0, hashed, in ``_evictable``), or *in use* (ref > 0, possibly hashed).
- A hashed block holds exactly the full block of tokens its hash names; several blocks may hold
  one hash (requests that computed the same prefix at once), and a hit takes any of them.
  Hashes chain: block i's hash covers (hash of block i-1, its token ids, the content hashes of
  images overlapping it), and the chain is seeded with the request's adapter id **and**
  version, so two adapters (or two versions of one adapter) never share a block.
- Only full blocks whose KV has been computed are hashed; a request never reuses the block that
  would hold its last prompt token (its logits must be computed).
- Idle cached blocks are evicted least recently freed first; a request frees its blocks tail
  first, so among blocks freed together the one at the end of the longer prefix goes first.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import Protocol


class Sequence(Protocol):
    """What the block manager reads and writes on a request (``valora.request.Request``)."""

    block_table: list[int]
    block_hashes: list[bytes]  # hash chain of the first full blocks (a cache; tokens never change)
    num_computed_tokens: int
    num_cached_tokens: int

    @property
    def num_tokens(self) -> int: ...

    def token_ids(self, start: int, end: int) -> list[int]: ...

    @property
    def cache_seed(self) -> tuple: ...

    def image_hashes_in(self, start: int, end: int) -> tuple[str, ...]: ...


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of which found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def block_hash(parent: bytes | None, token_ids: list[int], extra: tuple, seed: tuple) -> bytes:
    """128-bit hash of one full block, chained on its parent (or on the seed for block 0)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent if parent is not None else repr(seed).encode())
    h.update(array("q", token_ids).tobytes())
    if extra:
        h.update(repr(extra).encode())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash_of: list[bytes | None] = [None] * num_blocks
        # hash -> the blocks holding it (insertion-ordered set): two requests that computed the
        # same prefix in the same step both register, so evicting one copy keeps the other
        self._block_of_hash: dict[bytes, dict[int, None]] = {}
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() -> lowest id
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU order, oldest first
        self.stats = PrefixCacheStats()

    # ---- capacity -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free + idle cached)."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    # ---- allocation -----------------------------------------------------------------------
    def allocate_prefix(self, seq: Sequence) -> int:
        """Attach the longest cached prefix of a request that holds no blocks yet; returns the
        number of tokens found (also set as ``num_computed_tokens``)."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        num_tokens = seq.num_tokens
        num_hit = 0
        if self.enable_prefix_caching:
            max_blocks = (num_tokens - 1) // self.block_size  # keep the last token to compute
            for block_hash_value in islice(self._prefix_hashes(seq, max_blocks), max_blocks):
                holders = self._block_of_hash.get(block_hash_value)
                if not holders:
                    break
                block_id = next(iter(holders))
                self._take(block_id)
                seq.block_table.append(block_id)
            num_hit = len(seq.block_table) * self.block_size
            self.stats.queries += num_tokens
            self.stats.hits += num_hit
        seq.num_computed_tokens = seq.num_cached_tokens = num_hit
        return num_hit

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make room for ``num_new_tokens`` more tokens after the computed ones."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, {self.num_free_blocks} free")
        for _ in range(needed):
            seq.block_table.append(self._pop_free_block())

    def cache_full_blocks(
        self, seq: Sequence, num_computed_tokens: int, num_computed_before: int = 0
    ) -> None:
        """Register the blocks completed by computing tokens [num_computed_before,
        num_computed_tokens) (blocks filled earlier were registered when they filled)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(num_computed_tokens // self.block_size, len(seq.block_table))
        first = num_computed_before // self.block_size
        if num_full <= first:  # no block filled this step (most decode steps)
            return
        hashes = self._prefix_hashes(seq, num_full)
        for i in range(first, num_full):
            block_id, value = seq.block_table[i], hashes[i]
            if self._hash_of[block_id] is None:
                self._hash_of[block_id] = value
                self._block_of_hash.setdefault(value, {})[block_id] = None

    def free(self, seq: Sequence) -> None:
        """Release every block of ``seq`` (tail first) and reset its progress."""
        for block_id in reversed(seq.block_table):
            self._ref[block_id] -= 1
            assert self._ref[block_id] >= 0, f"block {block_id} freed twice"
            if self._ref[block_id] == 0:
                if self._hash_of[block_id] is not None:
                    self._evictable[block_id] = None
                else:
                    self._free.append(block_id)
        seq.block_table.clear()
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        """Forget every idle cached block (e.g. after adapter weights changed under a name)."""
        for block_id in list(self._evictable):
            self._drop_hash(block_id)
            self._free.append(block_id)
        self._evictable.clear()

    # ---- internals ------------------------------------------------------------------------
    def _prefix_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """The sequence's hash chain, extended to at least ``num_blocks`` full blocks (it may hold
        more); only blocks never hashed before are hashed now. The chain is kept on the sequence:
        tokens never change and the adapter (id, version) seed is fixed for a request's life."""
        hashes, bs = seq.block_hashes, self.block_size
        for i in range(len(hashes), num_blocks):
            start, end = i * bs, (i + 1) * bs
            parent = hashes[-1] if hashes else None
            extra = seq.image_hashes_in(start, end)
            hashes.append(block_hash(parent, seq.token_ids(start, end), extra, seq.cache_seed))
        return hashes  # the first num_blocks entries are the ones asked for

    def _take(self, block_id: int) -> None:
        if self._ref[block_id] == 0:
            del self._evictable[block_id]
        self._ref[block_id] += 1

    def _pop_free_block(self) -> int:
        if self._free:
            block_id = self._free.pop()
        else:
            block_id, _ = self._evictable.popitem(last=False)  # least recently freed
            self._drop_hash(block_id)
        self._ref[block_id] = 1
        return block_id

    def _drop_hash(self, block_id: int) -> None:
        value = self._hash_of[block_id]
        holders = self._block_of_hash.get(value) if value is not None else None
        if holders is not None:
            holders.pop(block_id, None)
            if not holders:
                del self._block_of_hash[value]
        self._hash_of[block_id] = None

    def check_invariants(self) -> None:
        """For tests: every block in exactly one state, and the hash table consistent."""
        free, idle = set(self._free), set(self._evictable)
        assert len(free) == len(self._free) and not free & idle
        for block_id in range(self.num_blocks):
            in_use = self._ref[block_id] > 0
            assert (block_id in free) + (block_id in idle) + in_use == 1, block_id
            assert block_id not in free or self._hash_of[block_id] is None
            assert block_id not in idle or self._hash_of[block_id] is not None
        for value, holders in self._block_of_hash.items():
            assert holders and all(self._hash_of[b] == value for b in holders)
        hashed = [b for b in range(self.num_blocks) if self._hash_of[b] is not None]
        assert all(b in self._block_of_hash[self._hash_of[b]] for b in hashed)

    @property
    def all_free(self) -> bool:
        return self.num_free_blocks == self.num_blocks
