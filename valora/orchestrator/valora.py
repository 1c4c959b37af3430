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
- Decision: with m the adapter with the most requests, merge m when the predicted LoRA cost of
  the queue's remaining work (uncomputed prompt rows and outputs still to come, so a
  prefill-heavy queue counts its prompts; per-step terms times the steps the outputs take)
  falls by more than the switch cost (with a margin) with m merged; move the merge to another
  adapter, or unmerge, on the same test.
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


def _remaining_outputs(request: Request) -> int:
    return max(0, request.sampling_params.max_tokens - len(request.output_token_ids))


def _remaining_rows(request: Request) -> int:
    """Rows the request still puts through the model: its uncomputed prompt tokens (image
    tokens included) and the outputs still to come."""
    prompt_left = max(0, request.num_prompt_tokens - request.num_computed_tokens)
    return prompt_left + _remaining_outputs(request)


class StepCostModel:
    def __init__(self, window: int = 512, refit_every: int = 16) -> None:
        self.coef = _PRIOR.copy()
        self._rows: deque[tuple[float, ...]] = deque(maxlen=window)
        self._refit_every = refit_every
        self._since_fit = 0

    def observe(self, record: StepRecord, overlay: bool = False) -> None:
        self._rows.append(
            (
                record.num_tokens,
                record.num_lora_rows,
                record.num_segments,
                float(overlay),
                record.seconds,
            )
        )
        self._since_fit += 1
        if self._since_fit >= self._refit_every and len(self._rows) >= 32:
            self._refit()

    def _refit(self) -> None:
        data = np.array(self._rows)
        x = np.column_stack([np.ones(len(data)), data[:, :4]])
        # the overlay column is separable from the intercept only when the window holds steps
        # with and without overlays; otherwise it is not refitted. With no overlay step left it
        # goes back to its prior (an estimate whose evidence has left the window must not stop
        # the merges that would measure it again); with only overlay steps it is kept
        overlay_steps = data[:, 3].sum()
        fitted = 5 if 0 < overlay_steps < len(data) else 4
        coef, *_ = np.linalg.lstsq(x[:, :fitted], data[:, 4], rcond=None)
        self.coef[:fitted] = np.maximum(coef, 0.0)  # costs are never negative
        if overlay_steps == 0:
            self.coef[4] = _PRIOR[4]
        self._since_fit = 0


class VaLoRAPolicy(Policy):
    name = "valora"
    backend = "atmm"
    can_merge = True

    def __init__(
        self, max_wait_s: float = 6.0, force_mode: str | None = None, margin: float = 1.5
    ) -> None:
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

    def plan(
        self,
        waiting: Iterable[Request],
        running: list[Request],
        merged: AdapterKey | None,
        now: float,
    ) -> Plan:
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
        cost = {key: self._remaining_cost(requests, key) for key in {merged, top, None}}
        if merged != top and cost[merged] - cost[top] > self.margin * self.switch_seconds:
            return top
        if merged is not None and cost[merged] > cost[None] + self.switch_seconds:
            return None
        return merged

    def _remaining_cost(self, requests, merged: AdapterKey | None) -> float:
        """Predicted LoRA seconds of the requests' remaining work with ``merged`` held merged
        (None: unmerged). Each remaining row (prompt tokens still to prefill, outputs still to
        come) of another adapter is an own-adapter row, and with a merge every row not of the
        merged adapter is also a correction row; segments and the overlay GEMMs are paid per
        step, over the steps the remaining outputs take. Costs shared by every choice (base
        GEMMs, attention) cancel out and are left out."""
        c = self.cost.coef
        keyed = [(adapter_key(r), _remaining_rows(r)) for r in requests]
        rows = sum(n for k, n in keyed if k is not None and k != merged)
        adapters = {k for k, _ in keyed if k is not None and k != merged}
        segments = len(adapters)
        if merged is not None:
            others = sum(n for k, n in keyed if k != merged)
            rows, segments = rows + others, segments + (others > 0)
        steps = max(1.0, float(np.mean([_remaining_outputs(r) for r in requests])))
        overlay = self.overlay_merges and merged is not None
        return float(c[2] * rows + steps * (c[3] * segments + c[4] * overlay))

    def observe(self, record: StepRecord) -> None:
        overlay = self.overlay_merges and record.mode in ("merged", "mixture")
        self.cost.observe(record, overlay)

    def forget(self) -> None:
        self.cost = StepCostModel()
        self.switch_seconds, self._num_switches = 5e-3, 0

    def observe_switch(self, seconds: float) -> None:
        self._num_switches += 1
        self.switch_seconds += (seconds - self.switch_seconds) / self._num_switches
