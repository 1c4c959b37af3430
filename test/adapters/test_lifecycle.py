"""Adapter lifecycle in the engine (CPU, fp32, tiny config): exact merge/unmerge over 1,000
switches, reload under the same name, unload while in use, and clear errors."""

from __future__ import annotations

import pytest
import torch
from manager_fixture import dummy_manager
from peft_reference import ADAPTERS, MAX_NEW, build_references
from prompts import CONVERSATIONS

from valora.llm import LLM
from valora.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
TWO = {"first": ADAPTERS["r8-all"], "second": ADAPTERS["r4-lm-vision"]}


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return build_references(tmp_path_factory.mktemp("life"), ["text"], TWO)


def text_prompt(llm: LLM) -> str:
    return llm.tokenizer.apply_chat_template(CONVERSATIONS["text"][0])


def test_1000_switches_leave_the_base_weights_bit_identical():
    lora = dummy_manager()
    before = {k: w.clone() for k, w in lora.merger.live.items()}
    keys = [lora.resolve(f"lora{i}") for i in range(3)]
    module = next(iter(lora.registry.weights(keys[0]).modules))
    for i in range(1000):
        lora.switch(keys[i % 3] if i % 4 else None)
        if i == 1:  # merged: W0 + c B A, computed once in fp32
            delta = lora.registry.weights(keys[1]).modules[module]
            offsets = lora.pool.targets[module[0]].spec.slice_offsets
            want = before[module] + delta.delta_weight(offsets)
            assert torch.allclose(lora.merger.live[module], want, atol=1e-6)
    lora.switch(None)
    changed = [k for k, w in lora.merger.live.items() if not torch.equal(before[k], w)]
    assert not changed and lora.merger.num_switches > 700


def test_reload_under_the_same_name_never_reuses_old_kv(refs):
    ckpt, dirs, expected = refs
    llm = LLM(
        ckpt, device="cpu", lora_modules={"x": dirs["first"]}, lora_backend="torch", policy="fcfs"
    )
    prompt = text_prompt(llm)
    out = llm.generate([prompt], GREEDY, lora="x", use_tqdm=False)[0]
    assert out.outputs[0].token_ids == expected[("first", "text")]
    assert llm.load_lora("x", dirs["second"]) == 2
    out = llm.generate([prompt], GREEDY, lora="x", use_tqdm=False)[0]
    assert out.num_cached_tokens == 0  # the cache is seeded with the adapter version
    assert out.outputs[0].token_ids == expected[("second", "text")]
    again = llm.generate([prompt], GREEDY, lora="x", use_tqdm=False)[0]
    assert again.num_cached_tokens > 0  # same version: its own blocks are reused
    assert again.outputs[0].token_ids == expected[("second", "text")]


def test_unload_while_in_use_finishes_the_running_request(refs):
    ckpt, dirs, expected = refs
    llm = LLM(
        ckpt, device="cpu", lora_modules={"x": dirs["first"]}, lora_backend="torch", policy="fcfs"
    )
    engine = llm.engine
    engine.add_request("r", text_prompt(llm), GREEDY, "x")
    engine.step()
    llm.unload_lora("x")
    with pytest.raises(ValueError, match="unknown adapter 'x'"):
        engine.add_request("s", text_prompt(llm), GREEDY, "x")
    tokens = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens = out.outputs[0].token_ids
    assert tokens == expected[("first", "text")]
    snap = engine.snapshot()
    assert "x" not in engine.adapters() and snap.adapter_refs == 0 and snap.is_idle


def test_errors_are_clear(refs):
    ckpt, dirs, _ = refs
    with pytest.raises(ValueError, match="rank"):
        LLM(ckpt, device="cpu", lora_modules={"x": dirs["first"]}, max_lora_rank=4)
    with pytest.raises(ValueError, match="vision"):
        LLM(ckpt, device="cpu", lora_modules={"x": dirs["second"]}, lora_towers=("language",))
    base = LLM(ckpt, device="cpu")
    with pytest.raises(ValueError, match="without LoRA"):
        base.generate(["hi"], GREEDY, lora="x", use_tqdm=False)
    llm = LLM(ckpt, device="cpu", enable_lora=True)
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        llm.generate(["hi"], GREEDY, lora="nope", use_tqdm=False)
    with pytest.raises(ValueError, match="unknown policy"):
        LLM(ckpt, device="cpu", scheduler="nope")
    assert not llm.engine.has_unfinished()
