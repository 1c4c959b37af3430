"""The engine's LoRA against HF + PEFT run per adapter (fp32, tiny config): mixed batches of four
adapters of different ranks (two with vision-tower LoRA) plus base-only requests, text and image
prompts, under every policy with its own kernels and in every mode."""

from __future__ import annotations

import pytest
from peft_reference import ADAPTERS, MAX_NEW, build_references
from prompts import CONVERSATIONS, conversation_images

from valora.llm import LLM
from valora.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
NAMES = [*ADAPTERS, None]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return build_references(tmp_path_factory.mktemp("lora"), list(CONVERSATIONS))


def run_mixed(llm: LLM, prompts: list[str]):
    """Every (adapter, prompt) pair in one generate call: one mixed batch."""
    pairs = [(a, p) for p in prompts for a in NAMES]
    inputs = [
        {
            "prompt": llm.tokenizer.apply_chat_template(CONVERSATIONS[p][0]),
            "multi_modal_data": {"image": conversation_images(p)},
        }
        for _, p in pairs
    ]
    outputs = llm.generate(inputs, GREEDY, lora=[a for a, _ in pairs], use_tqdm=False)
    return {pair: out.outputs[0].token_ids for pair, out in zip(pairs, outputs)}


def assert_matches(got: dict, expected: dict) -> None:
    mismatched = [pair for pair in got if got[pair] != expected[pair]]
    assert not mismatched, f"differ from HF + PEFT: {mismatched}"
    # the adapters matter: each changes at least one prompt's tokens
    for name in ADAPTERS:
        assert any(expected[(name, p)] != expected[(None, p)] for _, p in got), name


def assert_clean(llm: LLM) -> None:
    assert llm.engine.snapshot().is_idle and not llm.engine.has_unfinished()


@pytest.mark.parametrize(
    "scheduler, options",
    [
        ("fcfs", {}),
        ("valora", {}),
        ("valora", {"force_mode": "unmerged"}),
        ("valora", {"force_mode": "merged"}),
        ("valora", {"force_mode": "mixture"}),
        ("dlora", {"alpha": 0.1}),
    ],
    ids=["fcfs", "valora", "unmerged", "merged", "mixture", "dlora"],
)
def test_policies_and_modes_match_peft(refs, scheduler, options):
    ckpt, dirs, expected = refs
    llm = LLM(
        ckpt,
        device="cpu",
        lora_modules=dirs,
        scheduler=scheduler,
        policy_options=options,
        max_num_batched_tokens=256,
    )
    assert_matches(run_mixed(llm, list(CONVERSATIONS)), expected)
    assert_clean(llm)
    if options.get("force_mode") in ("merged", "mixture") or scheduler == "dlora":
        assert llm.engine.snapshot().steps["switches"] > 0


@pytest.mark.parametrize("scheduler", ["slora", "punica"])
def test_baseline_policies_match_peft_on_text(refs, scheduler):
    """S-LoRA (MBGMV) and Punica (SGMV) in the Triton interpreter: the text prompt only."""
    ckpt, dirs, expected = refs
    llm = LLM(ckpt, device="cpu", lora_modules=dirs, scheduler=scheduler)
    assert_matches(run_mixed(llm, ["text"]), expected)
    assert_clean(llm)


def test_eviction_under_a_tiny_pool_loses_nothing(refs):
    """Room for one rank-32 adapter at a time: adapters are evicted and reloaded as requests
    of the others come and go; every request still gets its own adapter's tokens."""
    ckpt, dirs, expected = refs
    llm = LLM(
        ckpt,
        device="cpu",
        lora_modules=dirs,
        max_loras=1,
        max_lora_rank=32,
        max_cpu_loras=1,
        lora_backend="torch",
        max_num_seqs=3,
    )
    assert_matches(run_mixed(llm, ["text", "one_image"]), expected)
    snap = llm.engine.snapshot()
    assert snap.pool_evictions > 0 and snap.pool_loads > len(ADAPTERS)
    assert snap.host_loads > 0  # host cache of one: re-read from disk
    assert_clean(llm)


@pytest.mark.parametrize("mode", ["unmerged", "mixture"])
def test_one_vision_pass_encodes_the_images_of_several_adapters(refs, mode, monkeypatch):
    """The step's image requests share one vision pass (segments per request, each with its
    own adapter, corrected in mixture mode) and still match HF + PEFT per adapter."""
    ckpt, dirs, expected = refs
    llm = LLM(
        ckpt,
        device="cpu",
        lora_modules=dirs,
        scheduler="valora",
        lora_backend="torch",
        policy_options={"force_mode": mode},
        max_num_batched_tokens=4096,
    )
    model, passes = llm.engine.model, []
    encode = model.encode_images

    def counted(pixels, grids):
        passes.append(len(grids))
        return encode(pixels, grids)

    monkeypatch.setattr(model, "encode_images", counted)
    assert_matches(run_mixed(llm, ["one_image", "two_images"]), expected)
    images = sum(len(CONVERSATIONS[p][1]) for p in ("one_image", "two_images")) * len(NAMES)
    assert sum(passes) == images and max(passes) > 2  # several requests' images per pass
    assert_clean(llm)
