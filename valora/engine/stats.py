"""Running totals of what the engine's steps did: per LoRA mode, the steps, their seconds, their
tokens; the merged-adapter switches and their seconds.

They are what a policy comparison needs beside the request latencies (how often each mode ran,
what a step cost, what switching cost). Plain counters, only ever increased (the engine thread
writes them; readers, the metrics endpoint, take a snapshot and diff two snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from valora.orchestrator import StepRecord

MODES = ("none", "unmerged", "merged", "mixture")


@dataclass
class EngineStats:
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    step_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODES, 0.0))
    step_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    switches: int = 0
    switch_seconds: float = 0.0

    def record_step(self, record: StepRecord) -> None:
        self.steps[record.mode] += 1
        self.step_seconds[record.mode] += record.seconds
        self.step_tokens[record.mode] += record.num_tokens

    def record_switch(self, seconds: float) -> None:
        self.switches += 1
        self.switch_seconds += seconds

    def snapshot(self) -> dict:
        return {
            "steps": dict(self.steps),
            "step_seconds": dict(self.step_seconds),
            "step_tokens": dict(self.step_tokens),
            "switches": self.switches,
            "switch_seconds": self.switch_seconds,
        }


@dataclass(frozen=True)
class EngineSnapshot:
    """What the engine holds and has done, at one moment (``LLMEngine.snapshot()``): read by
    the server's metrics, warm-up checks, benchmarks and tests. Plain values, frozen."""

    num_waiting: int
    num_running: int
    num_unfinished: int
    num_preemptions: int
    kv_blocks_total: int
    kv_blocks_in_use: int  # held by unfinished requests (idle cached blocks count as free)
    block_size: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int
    adapter_request_pins: int  # pool pins held by unfinished requests
    adapter_refs: int  # registry refs held by unfinished requests
    merged_adapter: tuple[str, int] | None
    merge_overlays: bool  # merged steps compute on dense overlays of a quantized base
    pool_loads: int
    pool_prefetches: int
    pool_evictions: int
    host_loads: int  # adapter host copies read again from their source
    steps: dict = field(default_factory=dict)  # EngineStats.snapshot(): per-mode step totals

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_in_use / self.kv_blocks_total

    @property
    def is_idle(self) -> bool:
        """Nothing unfinished, and nothing (blocks, pins, refs) left held."""
        return not (
            self.num_unfinished
            or self.kv_blocks_in_use
            or self.adapter_request_pins
            or self.adapter_refs
        )


def take_snapshot(
    scheduler, block_manager, lora, num_unfinished: int, stats: EngineStats
) -> EngineSnapshot:
    """The engine's ``snapshot()``: plain values read from its parts (``lora`` None: no LoRA)."""
    bm, pool = block_manager, None if lora is None else lora.pool.stats
    merger = None if lora is None else lora.merger
    return EngineSnapshot(
        num_waiting=len(scheduler.waiting),
        num_running=len(scheduler.running),
        num_unfinished=num_unfinished,
        num_preemptions=scheduler.num_preemptions,
        kv_blocks_total=bm.num_blocks,
        kv_blocks_in_use=bm.num_blocks - bm.num_free_blocks,
        block_size=bm.block_size,
        prefix_cache_queries=bm.stats.queries,
        prefix_cache_hits=bm.stats.hits,
        adapter_request_pins=0 if lora is None else lora.num_request_pins(),
        adapter_refs=0 if lora is None else lora.registry.num_refs(),
        merged_adapter=None if lora is None else lora.merged,
        merge_overlays=merger is not None and merger.has_overlays,
        pool_loads=pool.loads if pool else 0,
        pool_prefetches=pool.prefetches if pool else 0,
        pool_evictions=pool.evictions if pool else 0,
        host_loads=0 if lora is None else lora.registry.host_loads,
        steps=stats.snapshot(),
    )
