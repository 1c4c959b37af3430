"""Block manager: allocation, prefix hits, adapter isolation, eviction order, no leaks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from valora.block_manager import BlockManager


@dataclass
class Seq:
    tokens: list[int]
    adapter: str | None = None
    version: int = 0
    images: list[tuple[int, int, str]] = field(default_factory=list)  # (start, len, hash)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    block_hashes: list[bytes] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def token_ids(self, start: int, end: int) -> list[int]:
        return self.tokens[start:end]

    @property
    def cache_seed(self) -> tuple:
        return ("adapter", self.adapter, self.version)

    def image_hashes_in(self, start: int, end: int) -> tuple[str, ...]:
        return tuple(h for s, n, h in self.images if s < end and start < s + n)


def run_prefill(bm: BlockManager, seq: Seq) -> int:
    hit = bm.allocate_prefix(seq)
    bm.append_slots(seq, len(seq.tokens) - seq.num_computed_tokens)
    seq.num_computed_tokens = len(seq.tokens)
    bm.cache_full_blocks(seq, seq.num_computed_tokens)
    bm.check_invariants()
    return hit


def test_allocate_and_free_without_leaks():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Seq(list(range(10)))
    assert run_prefill(bm, seq) == 0
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    bm.free(seq)
    bm.check_invariants()
    assert bm.all_free and seq.block_table == [] and seq.num_computed_tokens == 0


def test_prefix_hit_counts_and_shared_blocks():
    bm = BlockManager(num_blocks=16, block_size=4)
    system = list(range(100, 112))  # 3 full blocks
    a, b = Seq(system + [1, 2]), Seq(system + [7, 8, 9])
    run_prefill(bm, a)
    assert run_prefill(bm, b) == 12
    assert a.block_table[:3] == b.block_table[:3]
    assert bm.stats.hits == 12 and bm.stats.queries == len(a.tokens) + len(b.tokens)
    bm.free(a)
    bm.free(b)
    bm.check_invariants()
    assert bm.all_free


def test_last_prompt_token_is_never_a_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    run_prefill(bm, Seq(list(range(8))))
    again = Seq(list(range(8)))
    assert run_prefill(bm, again) == 4  # block 2 holds the last token: recomputed


def test_adapters_and_versions_never_share_blocks():
    bm = BlockManager(num_blocks=32, block_size=4)
    tokens = list(range(20))
    base, a1, a2, a1v2 = Seq(tokens), Seq(tokens, "a1"), Seq(tokens, "a2"), Seq(tokens, "a1", 1)
    for seq in (base, a1, a2, a1v2):
        assert run_prefill(bm, seq) == 0
    tables = [set(s.block_table) for s in (base, a1, a2, a1v2)]
    assert all(not (x & y) for i, x in enumerate(tables) for y in tables[i + 1 :])
    assert run_prefill(bm, Seq(tokens, "a1")) == 16  # same adapter and version: hit


def test_image_content_hash_is_part_of_the_key():
    bm = BlockManager(num_blocks=16, block_size=4)
    pad = [9] * 8
    run_prefill(bm, Seq([1, 2] + pad + [3], images=[(2, 8, "img-A")]))
    other = Seq([1, 2] + pad + [3], images=[(2, 8, "img-B")])
    assert run_prefill(bm, other) == 0
    same = Seq([1, 2] + pad + [3], images=[(2, 8, "img-A")])
    assert run_prefill(bm, same) == 8


def test_lru_eviction_takes_tail_blocks_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    old = Seq([1, 2, 3, 4, 5])  # blocks: [1,2] [3,4] [5]
    run_prefill(bm, old)
    bm.free(old)
    # one fresh block needed beyond the 1 truly free block -> evict the tail cached block
    newer = Seq([7, 8, 9, 10, 11])
    run_prefill(bm, newer)
    bm.free(newer)
    assert run_prefill(bm, Seq([1, 2, 3, 4, 99])) == 2  # head block [1,2] survived; [3,4] evicted


def test_out_of_blocks_is_an_error_and_can_append_says_so():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = Seq(list(range(12)))
    bm.allocate_prefix(seq)
    assert not bm.can_append(seq, 12)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.append_slots(seq, 12)
    assert bm.all_free


def test_reset_prefix_cache_drops_idle_blocks():
    bm = BlockManager(num_blocks=8, block_size=2)
    seq = Seq([1, 2, 3, 4, 5])
    run_prefill(bm, seq)
    bm.free(seq)
    bm.reset_prefix_cache()
    bm.check_invariants()
    assert run_prefill(bm, Seq([1, 2, 3, 4, 5])) == 0


def test_decode_growth_allocates_one_block_at_a_time():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Seq(list(range(4)))
    run_prefill(bm, seq)
    assert len(seq.block_table) == 1
    seq.tokens.append(42)
    bm.append_slots(seq, 1)
    assert len(seq.block_table) == 2
    seq.num_computed_tokens += 1
    bm.check_invariants()


def test_blocks_filled_by_decode_are_cached_incrementally():
    """Decode registers each block in the step that fills it; hashes are computed once."""
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Seq(list(range(3)))
    run_prefill(bm, seq)
    for token in range(100, 106):  # 6 decode steps: fills block 0 (at 4) and block 1 (at 8)
        seq.tokens.append(token)
        bm.append_slots(seq, 1)
        before = seq.num_computed_tokens
        seq.num_computed_tokens += 1
        bm.cache_full_blocks(seq, seq.num_computed_tokens, before)
        bm.check_invariants()
    assert len(seq.block_hashes) == 2
    twin = Seq(list(seq.tokens) + [7])
    assert run_prefill(bm, twin) == 8  # both decode-filled blocks are hits
    bm.free(seq)
    bm.free(twin)
    assert bm.all_free


def test_twin_prefixes_computed_at_once_both_stay_cached():
    """Two requests with one prompt, admitted in the same step, each compute their own copy;
    when one copy is evicted the other still serves hits."""
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(9))
    a, b = Seq(list(tokens)), Seq(list(tokens))
    for seq in (a, b):  # both admitted before either computed anything
        assert bm.allocate_prefix(seq) == 0
        bm.append_slots(seq, len(tokens))
    for seq in (a, b):
        seq.num_computed_tokens = len(tokens)
        bm.cache_full_blocks(seq, len(tokens))
        bm.check_invariants()
    a_blocks = list(a.block_table[:2])
    bm.free(a)  # a's two full blocks become idle cached blocks, b still holds its copies
    filler = Seq(list(range(100, 120)))
    run_prefill(bm, filler)  # 5 blocks: the 3 free ones, then a's 2 idle copies are evicted
    assert all(bm._hash_of[block] is None or block in filler.block_table for block in a_blocks)
    bm.free(filler)
    third = Seq(list(tokens))
    assert run_prefill(bm, third) == 8  # served by b's copies
    assert third.block_table[:2] == b.block_table[:2]
