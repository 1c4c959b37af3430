"""What every orchestration policy provides (imports no torch).

Each step the engine asks the policy for a ``Plan`` (which adapter, if any, should be merged into
the base weights; which requests sit this step out), executes the switch, lets the scheduler
build the batch (admission in the policy's ``order``), runs it and reports the measured step
(``observe``). The mode of a step follows from its batch and the merged adapter:
``valora.adapters.runtime.lora_mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from valora.request import Request

AdapterKey = tuple[str, int]


def adapter_key(request: Request) -> AdapterKey | None:
    return None if request.adapter_id is None else (request.adapter_id, request.adapter_version)


@dataclass(frozen=True)
class Plan:
    merged: AdapterKey | None = None  # the adapter to hold merged this step (None: none)
    hold: Callable[[Request], bool] | None = None  # requests that sit this step out


@dataclass(frozen=True)
class StepRecord:
    """One executed step, as the cost models see it."""

    mode: str  # "none" | "unmerged" | "merged" | "mixture"
    num_tokens: int
    num_lora_rows: int  # rows with LoRA work: own-adapter rows plus correction rows
    num_segments: int  # adapter segments launched (own + correction)
    seconds: float


class Policy:
    """Base: first come first served, never merges, the ATMM kernels."""

    name = "fcfs"
    backend = "atmm"
    can_merge = False

    def bind(self, kv_capacity_tokens: int, overlay_merges: bool = False) -> None:
        """Told once by the engine: how many tokens the KV cache holds, and whether merged steps
        compute on dense overlays of a quantized base (``valora.adapters.merge``): slower GEMMs
        than the quantized ones, a cost of their own."""

    def order(self, waiting: Iterable[Request], running: list[Request]) -> Iterable[Request]:
        return list(waiting)

    def plan(
        self,
        waiting: Iterable[Request],
        running: list[Request],
        merged: AdapterKey | None,
        now: float,
    ) -> Plan:
        return Plan()

    def observe(self, record: StepRecord) -> None:
        pass

    def observe_switch(self, seconds: float) -> None:
        pass

    def forget(self) -> None:
        """Drop what was measured so far (after the warm-up, whose steps and switches include
        kernel compilation)."""


def demand(requests: Iterable[Request]) -> dict[AdapterKey | None, int]:
    """Number of requests per adapter (None: the base model)."""
    counts: dict[AdapterKey | None, int] = {}
    for request in requests:
        key = adapter_key(request)
        counts[key] = counts.get(key, 0) + 1
    return counts


def hottest(counts: dict[AdapterKey | None, int]) -> AdapterKey | None:
    """The adapter with the most requests (ties: the first seen); None if no adapter has any."""
    best, best_count = None, 0
    for key, count in counts.items():
        if key is not None and count > best_count:
            best, best_count = key, count
    return best
