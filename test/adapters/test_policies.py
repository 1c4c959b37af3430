"""The orchestration policies' decisions on synthetic queues (pure Python, no model)."""

from __future__ import annotations

import time

import numpy as np

from valora.orchestrator import make_policy
from valora.orchestrator.base import StepRecord, adapter_key
from valora.request import Request
from valora.sampling_params import SamplingParams


def req(adapter: str | None, prompt_len: int = 8, max_tokens: int = 64, age: float = 0.0):
    params = SamplingParams(max_tokens=max_tokens)
    r = Request(
        f"{adapter}-{time.perf_counter_ns()}",
        [1] * prompt_len,
        params,
        adapter_id=adapter,
        adapter_version=1,
    )
    r.arrival_time = time.monotonic() - age
    return r


def test_slora_admits_the_fcfs_prefix_whose_worst_case_fits():
    policy = make_policy("slora")
    policy.bind(kv_capacity_tokens=200)
    running = [req("a", 8, 64)]  # reserves 72
    waiting = [req("b", 8, 64), req("c", 8, 64), req("d", 1, 1)]
    assert policy.order(waiting, running) == waiting[:1]  # 72 + 72 fits, + 72 more does not
    assert policy.order(waiting, []) == waiting  # 72 + 72 + 2 <= 200
    assert policy.backend == "mbgmv" and not policy.can_merge


def test_punica_is_fcfs_unmerged_sgmv():
    policy = make_policy("punica")
    waiting = [req("a"), req(None), req("b")]
    assert (
        list(policy.order(waiting, [])) == waiting
        and policy.plan(waiting, [], None, 0).merged is None
    )
    assert policy.backend == "sgmv"


def test_dlora_merges_the_hot_adapter_holds_others_and_unmerges_on_starvation():
    policy = make_policy("dlora", alpha=0.6, beta=0.3, starvation_s=2.0)
    hot = [req("h") for _ in range(7)]
    cold = [req("c")]
    plan = policy.plan(cold, hot, None, time.monotonic())
    assert plan.merged == ("h", 1)
    assert plan.hold(cold[0]) and not plan.hold(hot[0])
    starving = [req("c", age=5.0)]
    assert policy.plan(starving, hot, ("h", 1), time.monotonic()).merged is None
    mixed = [req(str(i)) for i in range(8)]
    assert policy.plan(mixed, [], None, time.monotonic()).merged is None


def test_dlora_lowers_alpha_when_merged_steps_were_faster():
    policy = make_policy("dlora", alpha=0.6)
    policy.observe(StepRecord("merged", 32, 0, 0, 0.01))
    policy.observe(StepRecord("unmerged", 32, 32, 32, 0.02))
    policy.plan([req("c", age=9.0)], [req("h")], ("h", 1), time.monotonic())  # forces unmerge
    assert policy.alpha < 0.6


def test_valora_admits_late_requests_first_then_the_merged_adapters():
    policy = make_policy("valora", max_wait_s=1.0)
    policy._merged = ("h", 1)
    fresh_cold, hot, late_cold = req("c"), req("h"), req("c", age=3.0)
    assert policy.order([fresh_cold, hot, late_cold], []) == [late_cold, hot, fresh_cold]


def test_valora_cost_model_merges_a_dominant_adapter_only():
    policy = make_policy("valora")
    policy.cost.coef = np.array([1e-3, 1e-6, 2e-5, 1e-5, 0.0])  # LoRA rows cost a lot
    dominant = [req("h", max_tokens=128) for _ in range(28)] + [req(str(i)) for i in range(4)]
    assert policy.plan([], dominant, None, time.monotonic()).merged == ("h", 1)
    distinct = [req(str(i), max_tokens=128) for i in range(32)]
    assert policy.plan([], distinct, None, time.monotonic()).merged is None
    # merged, but its requests are gone: mixture now costs more than unmerged -> unmerge
    assert policy.plan([], distinct, ("h", 1), time.monotonic()).merged is None


def test_cost_model_refits_to_measured_steps():
    policy = make_policy("valora")
    true = np.array([2e-3, 1e-5, 3e-5, 4e-6])
    rng = np.random.default_rng(0)
    for _ in range(64):
        t, lora, seg = rng.integers(1, 256), rng.integers(0, 256), rng.integers(0, 64)
        seconds = float(true @ np.array([1, t, lora, seg]))
        policy.observe(StepRecord("unmerged", int(t), int(lora), int(seg), seconds))
    assert np.allclose(policy.cost.coef[:4], true, rtol=1e-3, atol=1e-9)
    assert policy.cost.coef[4] == 2e-3  # no overlay step measured: the prior stays
    assert adapter_key(req(None)) is None


def test_cost_model_learns_the_overlay_step_cost_on_a_quantized_base():
    policy = make_policy("valora")
    policy.bind(1000, overlay_merges=True)
    true = np.array([2e-3, 1e-5, 3e-5, 4e-6, 5e-3])
    rng = np.random.default_rng(1)
    for i in range(64):
        mode = ("unmerged", "mixture", "merged")[i % 3]
        t, lora, seg = rng.integers(1, 256), rng.integers(0, 256), rng.integers(0, 64)
        seconds = float(true @ np.array([1, t, lora, seg, mode != "unmerged"]))
        policy.observe(StepRecord(mode, int(t), int(lora), int(seg), seconds))
    assert np.allclose(policy.cost.coef, true, rtol=1e-3, atol=1e-9)


def test_valora_on_a_quantized_base_merges_only_where_the_gain_pays_for_the_overlays():
    """The same dominant queue: merged on a dense base; on a quantized one the dense overlay
    GEMMs cost more per step than the LoRA rows merging saves, so it stays unmerged."""
    dominant = [req("h", max_tokens=128) for _ in range(28)] + [req(str(i)) for i in range(4)]
    decisions = []
    for overlays in (False, True):
        policy = make_policy("valora")
        policy.bind(1000, overlay_merges=overlays)
        policy.cost.coef = np.array([1e-3, 1e-6, 2e-5, 1e-5, 2e-3])
        decisions.append(policy.plan([], dominant, None, time.monotonic()).merged)
    assert decisions == [("h", 1), None]


def test_overlay_term_is_fitted_only_next_to_steps_without_overlays_and_forget_resets():
    """A window of overlay steps only cannot tell c0 from the overlay term: the prior stays;
    ``forget`` (after the warm-up) drops every measurement."""
    policy = make_policy("valora")
    policy.bind(1000, overlay_merges=True)
    rng = np.random.default_rng(2)
    for _ in range(64):
        t, lora, seg = rng.integers(1, 256), rng.integers(0, 256), rng.integers(0, 64)
        policy.observe(StepRecord("mixture", int(t), int(lora), int(seg), 0.01 + 1e-5 * t))
    assert policy.cost.coef[4] == 2e-3 and np.isclose(policy.cost.coef[0], 0.01)
    policy.observe_switch(3.0)  # a first switch that compiled kernels
    policy.forget()
    assert policy.switch_seconds == 5e-3 and policy.cost.coef[0] == 2e-3


def test_valora_merges_for_a_prefill_heavy_queue():
    """vat-like requests (long image prompts, one output token): the saving is in the prompt
    rows still to prefill, so the hot adapter is merged though each request decodes once; on
    a quantized base too, where the overlay term is paid for one step only."""
    queue = [req("h", prompt_len=1600, max_tokens=1) for _ in range(8)]
    queue += [req("a", prompt_len=1600, max_tokens=1), req(None, prompt_len=1600, max_tokens=1)]
    for overlays in (False, True):
        policy = make_policy("valora")
        policy.bind(100_000, overlay_merges=overlays)
        policy.cost.coef = np.array([1e-3, 1e-6, 2e-6, 1e-5, 2e-3])
        assert policy.plan(queue, [], None, time.monotonic()).merged == ("h", 1)
    # once the prompts are computed nothing is left to save: no switch for it
    for r in queue:
        r.num_computed_tokens = r.num_prompt_tokens
    assert policy.plan([], queue, None, time.monotonic()).merged is None


def test_an_overlay_estimate_without_evidence_in_the_window_returns_to_the_prior():
    """A high overlay cost fitted from a few merged steps must not outlive them: once the
    window holds only unmerged steps the term is the prior again, so merging can resume."""
    policy = make_policy("valora")
    policy.bind(1000, overlay_merges=True)
    rng = np.random.default_rng(3)

    def step(mode, overlay_cost):
        t, lora, seg = rng.integers(1, 256), rng.integers(0, 256), rng.integers(0, 64)
        seconds = 2e-3 + 1e-5 * t + 3e-5 * lora + 4e-6 * seg + overlay_cost
        policy.observe(StepRecord(mode, int(t), int(lora), int(seg), float(seconds)))

    for i in range(64):
        step("mixture" if i % 2 else "unmerged", 0.05 if i % 2 else 0.0)
    assert np.isclose(policy.cost.coef[4], 0.05, rtol=1e-3)
    for _ in range(policy.cost._rows.maxlen):  # a window of overlay steps only: kept
        step("mixture", 0.05)
    assert np.isclose(policy.cost.coef[4], 0.05, rtol=1e-3)
    for _ in range(policy.cost._rows.maxlen):  # the merged steps leave the window
        step("unmerged", 0.0)
    assert policy.cost.coef[4] == 2e-3
