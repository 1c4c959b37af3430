"""dLoRA policy (Wu et al., "dLoRA: Dynamically Orchestrating Requests and Adapters for LoRA LLM
Serving", OSDI 2024): credit-based switching between merged and unmerged inference.

- Unmerged: every LoRA term through dLoRA's einsum/bmm (``atmm.baselines.dlora_einsum``).
- Merged: the hottest adapter folded into the base; only its requests run, the others wait and
  earn *credit* (the time they have waited).
- Switching: merge the hottest adapter when its share of the queued and running requests reaches
  ``alpha``; go back to unmerged when its share falls below ``beta``, when it has no requests
  left, or when a waiting request's credit passes ``starvation_s``.
- Adaptive thresholds: after each merged period the measured token throughput of merged steps is
  compared with that of unmerged steps; merging that paid off lowers ``alpha`` (merge sooner),
  merging that did not raises it.

The request-adapter co-migration across replicas of the paper has no counterpart on one GPU.
"""

from __future__ import annotations

from collections.abc import Iterable

from valora.orchestrator.base import (
    AdapterKey,
    Plan,
    Policy,
    StepRecord,
    adapter_key,
    demand,
    hottest,
)
from valora.request import Request


class DLoRAPolicy(Policy):
    name = "dlora"
    backend = "einsum"
    can_merge = True

    def __init__(self, alpha: float = 0.6, beta: float = 0.3, starvation_s: float = 2.0) -> None:
        self.alpha, self.beta, self.starvation_s = alpha, beta, starvation_s
        self._tokens = {"merged": 0, "unmerged": 0}
        self._seconds = {"merged": 0.0, "unmerged": 0.0}

    def plan(
        self,
        waiting: Iterable[Request],
        running: list[Request],
        merged: AdapterKey | None,
        now: float,
    ) -> Plan:
        waiting = list(waiting)
        counts = demand([*running, *waiting])
        total = sum(counts.values())
        top = hottest(counts)
        if merged is None:
            if top is not None and counts[top] >= self.alpha * total:
                return self._merged_plan(top)
            return Plan()
        share = counts.get(merged, 0) / max(total, 1)
        credit = max(
            (now - r.arrival_time for r in waiting if adapter_key(r) != merged), default=0.0
        )
        if counts.get(merged, 0) == 0 or share < self.beta or credit > self.starvation_s:
            self._adapt()
            return Plan()
        return self._merged_plan(merged)

    @staticmethod
    def _merged_plan(key: AdapterKey) -> Plan:
        return Plan(merged=key, hold=lambda r: adapter_key(r) != key)

    def observe(self, record: StepRecord) -> None:
        kind = "merged" if record.mode == "merged" else "unmerged"
        self._tokens[kind] += record.num_tokens
        self._seconds[kind] += record.seconds

    def _adapt(self) -> None:
        """Lower alpha if merged steps had the higher throughput, raise it otherwise."""
        if not (self._seconds["merged"] and self._seconds["unmerged"]):
            return
        merged_tput = self._tokens["merged"] / self._seconds["merged"]
        unmerged_tput = self._tokens["unmerged"] / self._seconds["unmerged"]
        step = -0.05 if merged_tput > unmerged_tput else 0.05
        self.alpha = min(0.95, max(self.beta + 0.05, self.alpha + step))
