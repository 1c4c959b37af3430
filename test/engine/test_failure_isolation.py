"""A request that breaks a step fails alone: the engine's other requests finish exactly as they
would have without it, and nothing it held (KV blocks, adapter pins) is left behind. Also the
admission checks that keep bad requests out of steps, and merged switches that do not fit."""

from __future__ import annotations

import pytest
import torch

from valora.llm import LLM
from valora.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPTS = [f"request {i}: tell me" for i in range(6)]
POISON = "poison pill"


def new_llm(**kwargs) -> LLM:
    options = dict(
        device="cpu", num_token=2048, num_dummy_adapters=4, lora_backend="torch", max_model_len=256
    )
    return LLM("tiny", **{**options, **kwargs})


def run(engine, prompts: list[str], adapters: list[str | None], params=GREEDY) -> dict:
    """Steps until done; -> request id -> final output."""
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters)):
        engine.add_request(f"r{i}", prompt, params, adapter)
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    return finals


def assert_nothing_held(engine) -> None:
    snap = engine.snapshot()
    assert snap.is_idle, snap


@pytest.fixture(scope="module")
def clean_tokens():
    engine = new_llm().engine
    adapters = ["lora0", "lora1", None, "lora2", "lora3", "lora0"]
    finals = run(engine, PROMPTS, adapters)
    return adapters, {rid: out.outputs[0].token_ids for rid, out in finals.items()}


def poison_prepare(engine, poison_ids: list[int]):
    """Make any step whose batch holds the poison prompt raise, as a bug hit by one request
    would (fault injection)."""
    prepare = engine.runner.prepare

    def faulty(sched):
        if any(r.prompt_token_ids[: len(poison_ids)] == poison_ids for r in sched.requests):
            raise RuntimeError("injected fault")
        return prepare(sched)

    engine.runner.prepare = faulty


def test_a_request_that_breaks_the_step_fails_alone(clean_tokens):
    adapters, expected = clean_tokens
    engine = new_llm().engine
    poison_prepare(engine, engine.tokenizer.encode(POISON))
    finals = run(engine, [*PROMPTS, POISON + " now"], [*adapters, "lora1"])
    bad = finals.pop(f"r{len(PROMPTS)}")
    assert bad.error and "RuntimeError" in bad.error and bad.outputs[0].finish_reason == "error"
    assert {rid: out.outputs[0].token_ids for rid, out in finals.items()} == expected
    assert all(out.error is None for out in finals.values())
    assert_nothing_held(engine)


def test_a_request_whose_output_processing_raises_fails_alone(clean_tokens):
    adapters, expected = clean_tokens
    engine = new_llm().engine
    append = engine.outputs.append

    def faulty(request, token):
        if request.request_id == "r1":
            raise ValueError("detokenizer exploded")
        return append(request, token)

    engine.outputs.append = faulty
    finals = run(engine, PROMPTS, adapters)
    assert finals.pop("r1").error
    assert {rid: out.outputs[0].token_ids for rid, out in finals.items()} == {
        rid: t for rid, t in expected.items() if rid != "r1"
    }
    assert_nothing_held(engine)


def test_max_tokens_none_on_an_adapter_under_the_valora_policy():
    """The normal OpenAI call (no max_tokens) used to crash the VaLoRA policy's cost model."""
    engine = new_llm(scheduler="valora", max_model_len=64).engine
    params = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    finals = run(engine, PROMPTS[:3], ["lora0", "lora1", "lora0"], params)
    for out in finals.values():
        assert out.error is None and out.outputs[0].finish_reason == "length"
        assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 64
    assert_nothing_held(engine)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(seed=2**64), "seed"),
        (dict(seed=-(2**63) - 1), "seed"),
    ],
)
def test_out_of_range_values_are_refused_at_construction(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad)


def test_admission_refuses_what_a_step_could_not_use():
    engine = new_llm(max_model_len=64).engine
    with pytest.raises(ValueError, match="stop_token_ids"):
        engine.add_request("a", "hi", SamplingParams(stop_token_ids=[10**9]))
    with pytest.raises(ValueError, match="min_tokens"):  # more than the context left
        engine.add_request("b", "hi", SamplingParams(max_tokens=None, min_tokens=100))
    assert_nothing_held(engine)
    assert not engine.has_unfinished()


@pytest.mark.parametrize("mode", ["merged", "mixture"])
def test_a_pool_of_one_adapter_with_merges_serves_every_request(clean_tokens, mode):
    """--max-loras 1 (rows for one rank-64 adapter): pinning the merged adapter must never need
    room the pool does not have; every request finishes with the unmerged run's tokens."""
    adapters, expected = clean_tokens
    engine = new_llm(scheduler="valora", max_loras=1, policy_options={"force_mode": mode}).engine
    finals = run(engine, PROMPTS, adapters)
    assert all(out.error is None for out in finals.values())
    assert {rid: out.outputs[0].token_ids for rid, out in finals.items()} == expected
    assert_nothing_held(engine)


def test_a_policy_that_raises_keeps_the_engine_serving(clean_tokens):
    adapters, expected = clean_tokens
    engine = new_llm().engine

    def broken(*args):
        raise TypeError("policy bug")

    engine.policy.plan = broken  # fault injection into the engine's policy
    finals = run(engine, PROMPTS, adapters)
    assert {rid: out.outputs[0].token_ids for rid, out in finals.items()} == expected


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["unmerged", "mixture"])
def test_isolation_and_small_pools_on_the_gpu(mode):
    """The same on CUDA with the Triton kernels and decode graphs: a poisoned request fails
    alone (its batch re-run one request at a time, graph replays included), and a one-adapter
    pool with merges serves every request with the clean run's tokens."""
    options = dict(
        device="cuda",
        dtype=torch.float32,
        lora_backend=None,
        scheduler="valora",
        policy_options={"force_mode": mode},
    )
    adapters = ["lora0", "lora1", None, "lora2", "lora3", "lora0"]
    clean = new_llm(**options).engine
    expected = {rid: o.outputs[0].token_ids for rid, o in run(clean, PROMPTS, adapters).items()}
    del clean
    engine = new_llm(**options).engine
    poison_prepare(engine, engine.tokenizer.encode(POISON))
    finals = run(engine, [*PROMPTS, POISON + " now"], [*adapters, "lora1"])
    assert finals.pop(f"r{len(PROMPTS)}").error
    assert {rid: out.outputs[0].token_ids for rid, out in finals.items()} == expected
    assert_nothing_held(engine)
    del engine
    small = new_llm(max_loras=1, **options).engine
    finals = run(small, PROMPTS, adapters)
    assert {rid: out.outputs[0].token_ids for rid, out in finals.items()} == expected
    assert_nothing_held(small)


def test_a_request_failing_after_it_finished_is_released_once():
    """A flush that raises after a request's stop rule fired: the failure path must not
    release its adapter ref a second time (the other request on that adapter still uses it)."""
    engine = new_llm().engine
    finish = engine.outputs.finish

    def faulty(request):
        if request.request_id == "r0":
            raise ValueError("flush exploded")
        return finish(request)

    engine.outputs.finish = faulty
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    engine.add_request(
        "r1",
        "a longer running request",
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
        "lora0",
    )
    engine.add_request("r0", "short", params, "lora0")
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
            if "r0" in finals and not out.finished and out.request_id == "r1":
                assert engine.snapshot().adapter_refs == 1  # r1's, not released twice
    assert finals["r0"].error and finals["r1"].error is None
    assert_nothing_held(engine)


def test_a_broken_engine_raises_instead_of_blaming_each_request():
    """Every request failing alone and a plain health probe failing too: the step raises (the
    server's loop then counts it against the engine, not the requests)."""
    engine = new_llm().engine
    engine.runner.prepare = lambda sched: (_ for _ in ()).throw(RuntimeError("broken"))
    engine.add_request("a", "hello", GREEDY, "lora0")
    engine.add_request("b", "hello", GREEDY, None)
    with pytest.raises(RuntimeError, match="broken"):
        engine.step()
