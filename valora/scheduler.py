"""Continuous batching with a per-step token budget, chunked prefill and preemption by recompute.

Imports no torch. There are no separate prefill and decode phases: every step, each running
request gets the tokens it still has to compute (1 for a decoding request, the rest of its
prompt, chunked to the budget, for a prefilling one), then waiting requests are admitted in the
order the admission policy gives (FCFS by default) while budget, sequence slots and KV blocks
last.

Invariants
- A request is in exactly one of ``waiting`` / ``running``, or finished (in neither).
- A running request holds blocks for all its computed and scheduled tokens; a waiting one holds
  none (a preempted request gives everything back and recomputes, prefix cache permitting).
- A running request's adapter is pinned in the GPU pool (``AdapterGate``): admitted only if it
  could be pinned, unpinned on preemption and when it finishes.
- When blocks run out, the most recently admitted running request is preempted first; the
  request being scheduled preempts itself only if it is the last one, so nothing deadlocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from valora.block_manager import BlockManager
from valora.config import SchedulerConfig
from valora.orchestrator import POLICIES
from valora.request import Request, RequestStatus


class AdmissionPolicy(Protocol):
    """The seam for the orchestrator policies: the order in which waiting requests are tried."""

    def order(self, waiting: deque[Request], running: list[Request]) -> Iterable[Request]: ...


class AdapterGate(Protocol):
    """Pins a request's adapter in the GPU pool on admission (False: no room now) and unpins it
    when the request leaves the running set. The engine's LoRA manager implements it."""

    def admit(self, request: Request) -> bool: ...

    def release(self, request: Request) -> None: ...


class OpenGate:
    """No LoRA: every request is admitted."""

    def admit(self, request: Request) -> bool:
        return True

    def release(self, request: Request) -> None:
        pass


# name -> policy class: the orchestration policies (their ``order`` is the admission order)
ADMISSION_POLICIES = POLICIES


@dataclass
class SchedulerOutput:
    """The step's work: request i computes ``num_new_tokens[i]`` tokens from its
    ``num_computed_tokens`` on."""

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.requests

    def add(self, request: Request, num_tokens: int) -> None:
        self.requests.append(request)
        self.num_new_tokens.append(num_tokens)

    def without(self, dropped: list[Request]) -> SchedulerOutput:
        """The same step less ``dropped`` (requests that failed and were finished)."""
        if not dropped:
            return self
        out = SchedulerOutput(preempted=self.preempted)
        for request, num in zip(self.requests, self.num_new_tokens):
            if not any(request is d for d in dropped):
                out.add(request, num)
        return out


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        policy: AdmissionPolicy | None = None,
        gate: AdapterGate | None = None,
    ) -> None:
        self.config = config
        self.block_manager = block_manager
        self.policy = policy or ADMISSION_POLICIES[config.policy]()
        self.gate = gate or OpenGate()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add_request(self, request: Request) -> None:
        if request.num_tokens > self.config.max_model_len:
            raise ValueError(
                f"prompt of {request.num_tokens} tokens exceeds max_model_len "
                f"{self.config.max_model_len}"
            )
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def schedule(self, hold: Callable[[Request], bool] | None = None) -> SchedulerOutput:
        """The step's batch; requests for which ``hold`` is true sit this step out (running ones
        keep their blocks, waiting ones are not admitted)."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        for request in list(self.running):
            if budget == 0:
                break
            if request not in self.running or (hold is not None and hold(request)):
                continue  # preempted by an earlier request this step, or held
            num = min(request.num_uncomputed_tokens, budget)
            if num and self._reserve(request, num, out):
                out.add(request, num)
                budget -= num
        if not out.preempted:
            budget = self._admit(out, budget, hold)
        return out

    def _reserve(self, request: Request, num: int, out: SchedulerOutput) -> bool:
        """Find blocks for ``num`` more tokens of a running request, preempting if needed."""
        bm = self.block_manager
        while not bm.can_append(request, num):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is request:
                return False
        bm.append_slots(request, num)
        return True

    def _admit(self, out: SchedulerOutput, budget: int, hold) -> int:
        bm = self.block_manager
        for request in self.policy.order(self.waiting, self.running):
            if budget == 0 or len(self.running) >= self.config.max_num_seqs:
                break
            if (hold is not None and hold(request)) or not self.gate.admit(request):
                continue  # held, or no room for its adapter now: others may still fit
            bm.allocate_prefix(request)
            num = min(request.num_uncomputed_tokens, budget)
            chunk_refused = num < request.num_uncomputed_tokens and not (
                self.config.enable_chunked_prefill
            )
            if chunk_refused or not bm.can_append(request, num):
                bm.free(request)  # give the prefix blocks back; try again next step
                self.gate.release(request)
                break
            bm.append_slots(request, num)
            self.waiting.remove(request)
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            out.add(request, num)
            budget -= num
        return budget

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.block_manager.free(request)
        self.gate.release(request)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        out.preempted.append(request)
        if request in out.requests:
            i = out.requests.index(request)
            del out.requests[i], out.num_new_tokens[i]

    def update(self, out: SchedulerOutput) -> list[Request]:
        """Advance the computed counts after the model ran; returns the requests that now need a
        sampled token (their every known token is computed)."""
        bm = self.block_manager
        ready = []
        for request, num in zip(out.requests, out.num_new_tokens):
            request.num_computed_tokens += num
            bm.cache_full_blocks(
                request, request.num_computed_tokens, request.num_computed_tokens - num
            )
            if request.num_computed_tokens == request.num_tokens:
                ready.append(request)
        return ready

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Remove a request (stopped, length-capped or aborted) and release its blocks."""
        if request in self.running:
            self.running.remove(request)
            self.gate.release(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)
        request.status = status

    def find(self, request_id: str) -> Request | None:
        for request in (*self.running, *self.waiting):
            if request.request_id == request_id:
                return request
        return None
