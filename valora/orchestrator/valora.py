"""VaLoRA policy (Mi et al., "Empower Vision Applications with LoRA LMM", EuroSys 2025):
mode and batch chosen each step from a cost model fitted to measured step times.

- Modes: unmerged (ATMM), merged (the hot adapter folded into the base) and mixture (merged plus
  ``-c_m B_m A_m x`` corrections for the other rows, in prefill and decode); switching rewrites
  the base weights from a pristine copy (``valora.adapters.merge``).
- Cost model (``StepCostModel``): step seconds = c0 + c_tok * tokens + c_lora * LoRA rows +
  c_seg * adapter segments + c_overlay * [merged weights in dense overlays], refitted by least
  squares on the steps measured so far; the switch cost is the running mean of measured
  switches. The overlay term exists on a quantized base only: there a merged or mixture step
  runs the merged layers as dense GEMMs on bf16 overlays instead of the 4/8-bit kernels (more
  weight bytes per decode step), and a switch dequantizes the layers it merges.
- Decision: with m the adapter with the most requests and H its requests' mean remaining output,
  merge m when (cost unmerged - cost mixture) * H exceeds the switch cost (with a margin); move
  the merge to another adapter, or unmerge, on the same test.
- Batch: waiting requests are admitted first those past ``max_wait_s`` (the bound on anyone's
  wait), then the merged adapter's requests, then the rest, each group first come first served.

``force_mode`` ("unmerged" | "merged" | "mixture") pins the mode for tests and ablations: merged
holds every request of other adapters while the merged adapter has requests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

import numpy as np

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

# c0, per token, per LoRA row, per segment, per step on dense overlays (seconds); the overlay
# prior: a 7B decode step on bf16 weights against 4-bit ones (benchmarks/results/quant_h100.json)
_PRIOR = np.array([2e-3, 2e-6, 4e-7, 2e-6, 2e-3])


class StepCostModel:
    def __init__(self, window: int = 512, refit_every: int = 16) -> None:
        self.coef = _PRIOR.copy()
        self._rows: deque[tuple[float, ...]] = deque(maxlen=window)
        self._refit_every = refit_every
        self._since_fit = 0

    def predict(self, tokens: int, lora_rows: int, segments: int, overlay: bool = False) -> float:
        return float(self.coef @ np.array([1.0, tokens, lora_rows, segments, float(overlay)]))

    def observe(self, record: StepRecord, overlay: bool = False) -> None:
        self._rows.append((record.num_tokens, record.num_lora_rows, record.num_segments,
                           float(overlay), record.seconds))  # fmt: skip
        self._since_fit += 1
        if self._since_fit >= self._refit_every and len(self._rows) >= 32:
            self._refit()

    def _refit(self) -> None:
        data = np.array(self._rows)
        x = np.column_stack([np.ones(len(data)), data[:, :4]])
        # the overlay column is separable from the intercept only when the window holds steps
        # with and without overlays; otherwise keep its prior
        fitted = 5 if 0 < data[:, 3].sum() < len(data) else 4
        coef, *_ = np.linalg.lstsq(x[:, :fitted], data[:, 4], rcond=None)
        self.coef[:fitted] = np.maximum(coef, 0.0)  # costs are never negative
        self._since_fit = 0


class VaLoRAPolicy(Policy):
    name = "valora"
    backend = "atmm"
    can_merge = True

    def __init__(self, max_wait_s: float = 6.0, force_mode: str | None = None,
                 margin: float = 1.5) -> None:  # fmt: skip
        if force_mode not in (None, "unmerged", "merged", "mixture"):
            raise ValueError(f"force_mode must be unmerged, merged or mixture, got {force_mode!r}")
        self.max_wait_s, self.force_mode, self.margin = max_wait_s, force_mode, margin
        self.cost = StepCostModel()
        self.overlay_merges = False  # merged steps compute on dense overlays (quantized base)
        self.switch_seconds = 5e-3  # prior until a switch is measured
        self._num_switches = 0
        self._merged: AdapterKey | None = None

    def bind(self, kv_capacity_tokens: int, overlay_merges: bool = False) -> None:
        self.overlay_merges = overlay_merges

    def order(self, waiting: Iterable[Request], running: list[Request]) -> list[Request]:
        now, waiting = time.monotonic(), list(waiting)
        late = [r for r in waiting if now - r.arrival_time > self.max_wait_s]
        late_ids = {id(r) for r in late}
        hot = [r for r in waiting if id(r) not in late_ids and self._is_merged(r)]
        hot_ids = {id(r) for r in hot}
        rest = [r for r in waiting if id(r) not in late_ids and id(r) not in hot_ids]
        return late + hot + rest

    def _is_merged(self, request: Request) -> bool:
        return self._merged is not None and adapter_key(request) == self._merged

    def plan(self, waiting: Iterable[Request], running: list[Request],
             merged: AdapterKey | None, now: float) -> Plan:  # fmt: skip
        requests = [*running, *waiting]
        counts = demand(requests)
        target = self._choose(requests, counts, merged)
        self._merged = target
        hold = None
        if self.force_mode == "merged" and target is not None:
            hold = lambda r: adapter_key(r) != target  # noqa: E731
        return Plan(merged=target, hold=hold)

    def _choose(self, requests, counts, merged) -> AdapterKey | None:
        top = hottest(counts)
        if self.force_mode == "unmerged":
            return None
        if self.force_mode is not None:  # merged / mixture: keep one merged while it has work
            return merged if merged is not None and counts.get(merged, 0) else top
        if top is None:
            return None
        gain = self._mixture_cost(requests, merged) - self._mixture_cost(requests, top)
        horizon = self._horizon(requests, top)
        if merged != top and gain * horizon > self.margin * self.switch_seconds:
            return top
        if merged is not None and self._mixture_cost(requests, merged) > self._unmerged_cost(
            requests
        ) + self.switch_seconds / max(horizon, 1):
            return None
        return merged

    def _unmerged_cost(self, requests) -> float:
        rows = [adapter_key(r) for r in requests]
        lora_rows = sum(k is not None for k in rows)
        return self.cost.predict(len(rows), lora_rows, len({k for k in rows if k is not None}))

    def _mixture_cost(self, requests, merged: AdapterKey | None) -> float:
        """One decode row per request: own-adapter rows plus a correction row per other row."""
        if merged is None:
            return self._unmerged_cost(requests)
        rows = [adapter_key(r) for r in requests]
        others = [k for k in rows if k != merged]
        own = [k for k in others if k is not None]
        segments = len(set(own)) + (1 if others else 0)
        return self.cost.predict(len(rows), len(own) + len(others), segments, self.overlay_merges)

    @staticmethod
    def _horizon(requests, key: AdapterKey) -> float:
        """Mean remaining output tokens of the adapter's requests (steps the choice pays for)."""
        left = [r.sampling_params.max_tokens - len(r.output_token_ids)
                for r in requests if adapter_key(r) == key]  # fmt: skip
        return sum(left) / len(left) if left else 0.0

    def observe(self, record: StepRecord) -> None:
        overlay = self.overlay_merges and record.mode in ("merged", "mixture")
        self.cost.observe(record, overlay)

    def forget(self) -> None:
        self.cost = StepCostModel()
        self.switch_seconds, self._num_switches = 5e-3, 0

    def observe_switch(self, seconds: float) -> None:
        self._num_switches += 1
        self.switch_seconds += (seconds - self.switch_seconds) / self._num_switches
