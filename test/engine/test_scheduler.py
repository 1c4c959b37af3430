"""Scheduler on synthetic requests (no torch, no model): token budget, chunked prefill, FCFS
admission, preemption, prefix hits, hold, adapter gate, block accounting."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import pytest

from valora.block_manager import BlockManager
from valora.request import Request, RequestStatus
from valora.sampling_params import SamplingParams
from valora.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

FAKE_TOKEN = 7
ABORTED = RequestStatus.FINISHED_ABORTED


@dataclass
class RecordingGate:
    """An AdapterGate that refuses the named requests and records every call."""

    refuse: set[str] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def admit(self, request: Request) -> bool:
        self.tried.append(request.request_id)
        return request.request_id not in self.refuse

    def release(self, request: Request) -> None:
        self.released.append(request.request_id)


def make_request(name: str, prompt: int | list[int], max_tokens: int = 100, adapter=None):
    """``prompt``: explicit token ids, or a length (distinct tokens per name: no prefix hits)."""
    if isinstance(prompt, int):
        start = zlib.crc32(name.encode()) % 10_000 * 1_000
        prompt = list(range(start, start + prompt))
    params = SamplingParams(max_tokens=max_tokens)
    return Request(name, prompt, params, adapter_id=adapter)


def make_scheduler(num_blocks=64, block_size=4, prefix_caching=False, gate=None, **config):
    config = {"max_num_batched_tokens": 16, "max_num_seqs": 8, **config}
    block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching)
    return Scheduler(SchedulerConfig(**config), block_manager, gate=gate)


def add(scheduler: Scheduler, *requests: Request) -> tuple[Request, ...]:
    for request in requests:
        scheduler.add_request(request)
    return requests


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


def scheduled(out: SchedulerOutput) -> list[tuple[str, int]]:
    return list(zip(ids(out.requests), out.num_new_tokens))


def check_queues(scheduler: Scheduler) -> None:
    waiting, running = list(scheduler.waiting), scheduler.running
    assert len({id(r) for r in waiting + running}) == len(waiting) + len(running)
    assert len(running) <= scheduler.config.max_num_seqs
    for request in waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert request.block_table == []
    block_size = scheduler.block_manager.block_size
    for request in running:
        assert request.status is RequestStatus.RUNNING
        assert len(request.block_table) * block_size >= request.num_computed_tokens


def step(scheduler: Scheduler, hold=None) -> tuple[SchedulerOutput, list[Request]]:
    """One engine step: schedule, 'run the model', sample a fake token, finish at max_tokens."""
    out = scheduler.schedule(hold)
    assert out.num_batched_tokens <= scheduler.config.max_num_batched_tokens
    ready = scheduler.update(out)
    for request in ready:
        request.output_token_ids.append(FAKE_TOKEN)
        if len(request.output_token_ids) == request.sampling_params.max_tokens:
            scheduler.finish(request, RequestStatus.FINISHED_LENGTH)
    scheduler.block_manager.check_invariants()
    check_queues(scheduler)
    return out, ready


def run_to_completion(scheduler: Scheduler, requests, max_steps: int = 500) -> None:
    for _ in range(max_steps):
        if not scheduler.num_unfinished:
            break
        step(scheduler)
        for r in requests:  # exactly one of waiting / running / finished
            assert (r in scheduler.waiting) + (r in scheduler.running) + r.is_finished == 1
    assert scheduler.num_unfinished == 0, "requests left after max_steps: deadlock?"
    assert [len(r.output_token_ids) for r in requests] == [
        r.sampling_params.max_tokens for r in requests
    ]
    assert scheduler.block_manager.all_free


def test_chunked_prefill_splits_a_long_prompt_into_budget_sized_chunks():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    (a,) = add(scheduler, make_request("A", 20, max_tokens=2))
    history = [(*step(scheduler), a.num_computed_tokens) for _ in range(4)]
    assert [scheduled(out) for out, _, _ in history] == [
        [("A", 8)],
        [("A", 8)],
        [("A", 4)],
        [("A", 1)],
    ]
    assert [ids(ready) for _, ready, _ in history] == [[], [], ["A"], ["A"]]
    assert [computed for _, _, computed in history] == [8, 16, 20, 0]  # finish resets progress
    assert a.status is RequestStatus.FINISHED_LENGTH and a.num_tokens == 22
    assert scheduler.num_unfinished == 0 and scheduler.block_manager.all_free


def test_without_chunked_prefill_a_prompt_that_does_not_fit_waits_and_blocks_the_queue():
    gate = RecordingGate()
    scheduler = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False, gate=gate)
    add(scheduler, make_request("A", 5), make_request("B", 6), make_request("C", 1))
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 5)] and ids(scheduler.waiting) == ["B", "C"]
    assert gate.tried == ["A", "B"] and gate.released == ["B"]  # B's pin is given back
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 1), ("B", 6), ("C", 1)]

    alone = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
    (d,) = add(alone, make_request("D", 9))
    out, _ = step(alone)
    assert out.is_empty and list(alone.waiting) == [d] and d.num_computed_tokens == 0
    assert alone.block_manager.all_free


def test_max_num_seqs_caps_the_running_set():
    scheduler = make_scheduler(max_num_batched_tokens=16, max_num_seqs=2)
    requests = add(scheduler, *(make_request(name, 6, max_tokens=3) for name in "ABCD"))
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 6), ("B", 6)] and ids(scheduler.waiting) == ["C", "D"]
    run_to_completion(scheduler, requests)


def test_fcfs_admission_fills_the_budget_in_arrival_order():
    scheduler = make_scheduler(max_num_batched_tokens=16)
    add(scheduler, *(make_request(name, 7) for name in "ABC"))
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 7), ("B", 7), ("C", 2)]
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 1), ("B", 1), ("C", 5)]


def test_decoding_requests_get_one_token_and_run_before_new_ones_are_admitted():
    scheduler = make_scheduler(max_num_batched_tokens=16)
    add(scheduler, make_request("A", 4, max_tokens=5))
    assert scheduled(step(scheduler)[0]) == [("A", 4)]
    add(scheduler, make_request("B", 20))
    history = [scheduled(step(scheduler)[0]) for _ in range(3)]
    assert history == [[("A", 1), ("B", 15)], [("A", 1), ("B", 5)], [("A", 1), ("B", 1)]]


def test_update_advances_computed_tokens_and_returns_only_requests_needing_a_sample():
    scheduler = make_scheduler(max_num_batched_tokens=16)
    a, b = add(scheduler, make_request("A", 4), make_request("B", 20))
    out = scheduler.schedule()
    assert scheduled(out) == [("A", 4), ("B", 12)]
    assert scheduler.update(out) == [a]
    assert (a.num_computed_tokens, b.num_computed_tokens) == (4, 12)


def test_out_of_blocks_preempts_the_most_recently_admitted_request():
    gate = RecordingGate()
    scheduler = make_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64, gate=gate)
    requests = add(scheduler, *(make_request(name, 8, max_tokens=10) for name in "ABC"))
    c = requests[2]
    assert scheduled(step(scheduler)[0]) == [("A", 8), ("B", 8), ("C", 8)]
    assert scheduler.block_manager.num_free_blocks == 0
    (d,) = add(scheduler, make_request("D", 4, max_tokens=3))
    out, _ = step(scheduler)  # A and B each need a 3rd block: C gives its 2 back
    assert scheduled(out) == [("A", 1), ("B", 1)] and out.preempted == [c]
    assert list(scheduler.waiting) == [c, d]  # back at the head, and nothing admitted
    assert c.status is RequestStatus.PREEMPTED and c.block_table == []
    assert (c.num_computed_tokens, c.num_tokens, c.num_preemptions) == (0, 9, 1)
    assert scheduler.num_preemptions == 1 and gate.released == ["C"]
    run_to_completion(scheduler, [*requests, d])
    assert scheduler.num_preemptions == sum(r.num_preemptions for r in [*requests, d])
    for name in "ABCD":  # every pin (admission attempt) given back exactly once
        assert gate.released.count(name) == gate.tried.count(name), name


def test_the_last_running_request_preempts_itself_instead_of_deadlocking():
    scheduler = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=64)
    a, b = add(scheduler, make_request("A", 3, max_tokens=3), make_request("B", 12, max_tokens=2))
    assert scheduled(step(scheduler)[0]) == [("A", 3), ("B", 12)]
    out, _ = step(scheduler)  # A fits its block; B needs a 4th and is the last one admitted
    assert scheduled(out) == [("A", 1)] and out.preempted == [b]
    assert list(scheduler.waiting) == [b] and b.block_table == []
    out, _ = step(scheduler)  # B needs 4 blocks, 2 are free: it waits while A finishes
    assert scheduled(out) == [("A", 1)] and a.status is RequestStatus.FINISHED_LENGTH
    out, _ = step(scheduler)
    assert scheduled(out) == [("B", 13)] and b.status is RequestStatus.FINISHED_LENGTH
    assert scheduler.num_unfinished == 0 and scheduler.block_manager.all_free
    assert scheduler.num_preemptions == 1


def test_prefix_cache_hit_on_admission_sets_num_computed_tokens():
    scheduler = make_scheduler(prefix_caching=True, block_size=4, max_num_batched_tokens=64)
    prompt = list(range(100, 110))
    add(scheduler, make_request("A", prompt, max_tokens=1))
    step(scheduler)  # A computes 10 tokens (2 full blocks cached) and finishes
    b, c = add(
        scheduler,
        make_request("B", prompt[:8] + [1, 2]),  # shares 2 full blocks with A
        make_request("C", prompt, adapter="x"),  # same tokens, other adapter: no hit
    )
    out = scheduler.schedule()
    assert scheduled(out) == [("B", 2), ("C", 10)]
    assert (b.num_computed_tokens, b.num_cached_tokens) == (8, 8)
    assert (c.num_computed_tokens, c.num_cached_tokens) == (0, 0)
    scheduler.update(out)
    assert (b.num_computed_tokens, c.num_computed_tokens) == (10, 10)
    scheduler.block_manager.check_invariants()


def test_held_requests_sit_out_running_ones_keep_their_blocks():
    scheduler = make_scheduler(max_num_batched_tokens=64)
    (a,) = add(scheduler, make_request("A", 4))
    step(scheduler)
    blocks = list(a.block_table)
    c, d = add(scheduler, make_request("C", 4), make_request("D", 4))
    out, _ = step(scheduler, hold=lambda r: r.request_id in {"A", "C"})
    assert scheduled(out) == [("D", 4)]
    assert ids(scheduler.running) == ["A", "D"] and list(scheduler.waiting) == [c]
    assert a.block_table == blocks and a.num_computed_tokens == 4 and c.block_table == []
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 1), ("D", 1), ("C", 4)]


def test_a_refusing_adapter_gate_leaves_the_request_waiting_and_admits_the_ones_behind():
    gate = RecordingGate(refuse={"B"})
    scheduler = make_scheduler(max_num_batched_tokens=64, gate=gate)
    a, b, c = add(scheduler, *(make_request(name, 4) for name in "ABC"))
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 4), ("C", 4)] and list(scheduler.waiting) == [b]
    assert gate.tried == ["A", "B", "C"] and gate.released == [] and b.block_table == []
    gate.refuse.clear()
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 1), ("C", 1), ("B", 4)]
    scheduler.finish(a, ABORTED)
    assert gate.released == ["A"] and ids(scheduler.running) == ["C", "B"]


def test_finish_frees_the_blocks_of_running_and_waiting_requests():
    gate = RecordingGate()
    scheduler = make_scheduler(max_num_batched_tokens=8, gate=gate)
    a, b = add(scheduler, make_request("A", 20), make_request("B", 4))
    out, _ = step(scheduler)
    assert scheduled(out) == [("A", 8)] and len(a.block_table) == 2
    scheduler.finish(a, ABORTED)  # mid-prefill
    scheduler.finish(b, ABORTED)  # never admitted: nothing pinned to release
    assert a.status is ABORTED and b.status is ABORTED and a.block_table == []
    assert scheduler.num_unfinished == 0 and gate.released == ["A"]
    scheduler.block_manager.check_invariants()
    assert scheduler.block_manager.num_free_blocks == 64


def test_a_mixed_workload_runs_to_completion_within_every_limit():
    scheduler = make_scheduler(
        num_blocks=8, block_size=4, max_num_batched_tokens=12, max_num_seqs=3
    )
    lengths = [(3, 8), (25, 2), (9, 5), (4, 1), (17, 6), (6, 7), (12, 3), (5, 4), (20, 8), (8, 2)]
    requests = [make_request(f"r{i}", n, max_tokens=m) for i, (n, m) in enumerate(lengths)]
    add(scheduler, *requests)
    run_to_completion(scheduler, requests)
    assert scheduler.num_preemptions > 0  # the small cache forced the preemption path
    assert scheduler.num_preemptions == sum(r.num_preemptions for r in requests)


def test_a_prompt_longer_than_max_model_len_is_rejected():
    scheduler = make_scheduler(max_model_len=8)
    with pytest.raises(ValueError, match="exceeds max_model_len"):
        scheduler.add_request(make_request("A", 9))
    assert scheduler.num_unfinished == 0
