"""The engine's greedy generation against transformers' ``generate`` (fp32, tiny config) for a
mixed batch of text and image prompts: with and without prefix caching, with small chunked
prefill, and under forced preemption. Every run ends with all KV blocks free."""

from __future__ import annotations

import pytest
from hf_reference import hf_greedy, make_hf_model, save_checkpoint
from prompts import CONVERSATIONS, conversation_images

from valora.llm import LLM
from valora.sampling_params import SamplingParams

MAX_NEW = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = make_hf_model(tie_word_embeddings=False)
    return hf, str(save_checkpoint(hf, tmp_path_factory.mktemp("ckpt"), "original-flat-single"))


@pytest.fixture(scope="module")
def hf_tokens(checkpoint) -> dict[str, list[int]]:
    hf, _ = checkpoint
    return {name: hf_greedy(hf, name, MAX_NEW, hf.config.image_token_id) for name in CONVERSATIONS}


def engine_prompts(llm: LLM) -> list[dict]:
    return [
        {
            "prompt": llm.tokenizer.apply_chat_template(CONVERSATIONS[name][0]),
            "multi_modal_data": {"image": conversation_images(name)},
        }
        for name in CONVERSATIONS
    ]


def assert_no_leaks(llm: LLM) -> None:
    llm.engine.check_invariants()
    snap = llm.engine.snapshot()
    assert snap.is_idle, f"{snap.kv_blocks_in_use} blocks still held"
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"enable_prefix_caching": False},
        {"max_num_batched_tokens": 7, "block_size": 4},  # prefill chunked across image tokens
        {"num_token": 80, "block_size": 4},  # too few blocks for all at once: preemption
    ],
    ids=["default", "no-prefix-cache", "chunked-prefill", "preemption"],
)
def test_greedy_matches_transformers_generate(checkpoint, hf_tokens, options):
    _, path = checkpoint
    llm = LLM(path, device="cpu", **options)
    outputs = llm.generate(engine_prompts(llm), GREEDY, use_tqdm=False)
    for name, out in zip(CONVERSATIONS, outputs):
        assert out.outputs[0].token_ids == hf_tokens[name], name
        assert out.outputs[0].finish_reason == "length"
        assert out.first_token_time is not None and out.finish_time >= out.first_token_time
    if "num_token" in options:
        assert llm.engine.snapshot().num_preemptions > 0
    assert_no_leaks(llm)
    # the same prompts again: served from the prefix cache when it is on, same tokens
    again = llm.generate(engine_prompts(llm), GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outputs]
    assert_no_leaks(llm)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [
        {},  # 3 decoding requests: the graph of size 4 with one padded row
        {"enforce_eager": True},
        {"max_num_batched_tokens": 7, "block_size": 4},
        {"num_token": 80, "block_size": 4},
    ],
    ids=["graphs", "eager", "chunked-prefill", "preemption"],
)
def test_gpu_greedy_matches_transformers_generate(checkpoint, hf_tokens, options):
    """The GPU path (Triton kernels, CUDA graphs) in fp32 against the CPU reference tokens."""
    _, path = checkpoint
    llm = LLM(path, device="cuda", dtype="float32", max_num_seqs=8, **options)
    assert llm.engine.model.kernels.name == "triton"
    outputs = llm.generate(engine_prompts(llm), GREEDY, use_tqdm=False)
    for name, out in zip(CONVERSATIONS, outputs):
        assert out.outputs[0].token_ids == hf_tokens[name], name
    assert_no_leaks(llm)


def test_shared_system_prompt_hits_the_cache(checkpoint):
    _, path = checkpoint
    llm = LLM(path, device="cpu", block_size=4)
    system = "You are a meticulous assistant. " * 12
    first = llm.generate(system + "Question one?", GREEDY, use_tqdm=False)[0]
    hits_before = llm.engine.snapshot().prefix_cache_hits
    second = llm.generate(system + "Question one?", GREEDY, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= len(llm.tokenizer.encode(system)) - 4
    assert llm.engine.snapshot().prefix_cache_hits - hits_before == second.num_cached_tokens
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    assert_no_leaks(llm)


def test_different_adapters_never_share_blocks(checkpoint):
    _, path = checkpoint
    llm = LLM(
        path, device="cpu", block_size=4, enable_lora=True, lora_backend="torch", policy="fcfs"
    )
    engine, prompt = llm.engine, "A fairly long prompt that spans several blocks of tokens."
    engine.load_dummy_adapter("alpha", 8, seed=1)
    engine.load_dummy_adapter("beta", 8, seed=2)

    def cached(adapter: str) -> int:  # prefix-cache hits of one request on ``adapter``
        return llm.generate(prompt, GREEDY, lora=adapter, use_tqdm=False)[0].num_cached_tokens

    assert cached("alpha") == 0
    assert cached("beta") == 0  # the same tokens on another adapter: none of alpha's blocks
    assert cached("alpha") > 0  # its own blocks are reused
    engine.load_dummy_adapter("alpha", 8, seed=3)  # reloaded: new version
    assert cached("alpha") == 0  # never the old version's blocks
    assert_no_leaks(llm)


def test_abort_frees_everything(checkpoint):
    _, path = checkpoint
    llm = LLM(path, device="cpu", block_size=4)
    engine = llm.engine
    for i in range(3):
        engine.add_request(str(i), f"prompt number {i} " * 5, SamplingParams(max_tokens=50))
    engine.step()
    engine.step()
    assert engine.abort("1") and engine.abort("0")
    assert not engine.abort("0")  # already gone
    engine.abort("2")
    assert_no_leaks(llm)


def test_prompt_too_long_is_rejected(checkpoint):
    _, path = checkpoint
    llm = LLM(path, device="cpu", num_token=32, block_size=4)
    with pytest.raises(ValueError, match="does not fit"):
        llm.generate("word " * 100, GREEDY, use_tqdm=False)
    assert_no_leaks(llm)


def test_scheduler_policy_is_chosen_by_name(checkpoint):
    _, path = checkpoint
    assert LLM(path, device="cpu", scheduler="fcfs").engine.config.scheduler.policy == "fcfs"
    assert LLM(path, device="cpu", policy="punica").engine.config.scheduler.policy == "punica"
    with pytest.raises(ValueError, match="unknown policy"):
        LLM(path, device="cpu", scheduler="lottery")
