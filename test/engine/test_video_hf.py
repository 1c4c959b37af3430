"""Video prompts through the engine against transformers' ``generate`` (fp32, tiny config): one
video, two videos, an image and a video in one prompt, each batched next to text and image
prompts, with prefix caching on and off and with prefill chunked across video tokens; and a
LoRA adapter whose targets include the vision tower, against HF + PEFT.

The oracle gets the same ``pixel_values_videos`` / ``video_grid_thw`` our processor made
(transformers' own video processor needs torchvision; ``test/model/test_video.py`` checks our
processor against it where torchvision is importable) and ``mm_token_type_ids`` (0 text, 1 image,
2 video), without which transformers 5 silently falls back to 1-D positions."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_reference import hf_vision_inputs, make_hf_model, save_checkpoint
from peft import LoraConfig, get_peft_model
from prompts import noise_image
from video_files import IMAGE, VIDEO, chat, noise_video

from valora.llm import LLM
from valora.sampling_params import SamplingParams

MAX_NEW = 6
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
# small frames stay at their size (multiples of 28): a few dozen video tokens per prompt
SMALL = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 16}

# (prompt text, images, videos); the 5-frame video has an odd frame count (last frame repeated)
PROMPTS = {
    "text": (chat("Say something."), [], []),
    "one_image": (chat(f"{IMAGE}Describe it."), [noise_image(84, 56, 1)], []),
    "one_video": (chat(f"{VIDEO}What happens?"), [], [noise_video(4, 56, 84, 2)]),
    "two_videos": (
        chat(f"First {VIDEO} then {VIDEO} which is longer?"),
        [],
        [noise_video(5, 84, 56, 3), noise_video(2, 56, 56, 4)],
    ),
    "image_and_video": (
        chat(f"{IMAGE} and {VIDEO}: same scene?"),
        [noise_image(56, 56, 5)],
        [noise_video(6, 56, 84, 6)],
    ),
}
VIDEO_PROMPTS = ["one_video", "two_videos", "image_and_video"]


def engine_prompt(name: str) -> dict:
    text, images, videos = PROMPTS[name]
    return {
        "prompt": text,
        "multi_modal_data": {"image": images, "video": videos},
        "mm_processor_kwargs": SMALL,
    }


def hf_greedy(model, llm: LLM, name: str) -> list[int]:
    """transformers' greedy tokens for a prompt, on the pixels our processor made."""
    processed = llm.engine.process_prompt(engine_prompt(name))
    ids, kwargs = hf_vision_inputs(processed, llm.engine.model_config)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False, **kwargs
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    hf = make_hf_model(tie_word_embeddings=False)
    return hf, str(save_checkpoint(hf, tmp_path_factory.mktemp("ckpt"), "original-flat-single"))


@pytest.fixture(scope="module")
def expected(base):
    hf, path = base
    llm = LLM(path, device="cpu")
    return {name: hf_greedy(hf, llm, name) for name in PROMPTS}


def assert_idle(llm: LLM) -> None:
    llm.engine.check_invariants()
    assert llm.engine.snapshot().is_idle and not llm.engine.has_unfinished()


@pytest.mark.parametrize(
    "options",
    [{}, {"enable_prefix_caching": False}, {"max_num_batched_tokens": 9, "block_size": 4}],
    ids=["default", "no-prefix-cache", "chunked-prefill"],
)
def test_video_prompts_batched_with_text_and_images_match_transformers(base, expected, options):
    _, path = base
    llm = LLM(path, device="cpu", **options)
    names = list(PROMPTS)
    outputs = llm.generate([engine_prompt(n) for n in names], GREEDY, use_tqdm=False)
    got = {n: o.outputs[0].token_ids for n, o in zip(names, outputs)}
    assert got == expected
    # again: with prefix caching the second round reuses the first round's video blocks
    again = llm.generate([engine_prompt(n) for n in names], GREEDY, use_tqdm=False)
    assert {n: o.outputs[0].token_ids for n, o in zip(names, again)} == expected
    if options.get("enable_prefix_caching", True):
        assert any(o.num_cached_tokens > 0 for o in again)
    assert_idle(llm)


def test_the_video_content_is_in_the_prefix_hash(base):
    """Two prompts alike but for the video's pixels share no video blocks."""
    _, path = base
    llm = LLM(path, device="cpu", block_size=4)
    first = engine_prompt("one_video")
    other = {**first, "multi_modal_data": {"image": [], "video": [noise_video(4, 56, 84, 99)]}}
    a = llm.generate([first], GREEDY, use_tqdm=False)[0]
    b = llm.generate([other], GREEDY, use_tqdm=False)[0]
    video_start = a.prompt_token_ids.index(llm.engine.model_config.video_token_id)
    assert b.num_cached_tokens <= video_start
    assert_idle(llm)


def test_a_vision_lora_on_video_prompts_matches_peft(base, tmp_path):
    hf, path = base
    torch.manual_seed(7)
    targets = ["q_proj", "v_proj", "down_proj", "attn.qkv", "mlp.fc1", "merger.mlp.0"]
    peft_model = get_peft_model(
        copy.deepcopy(hf),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets),
    ).eval()
    peft_model.save_pretrained(tmp_path / "vision-lora")
    llm = LLM(path, device="cpu", lora_modules={"vis": str(tmp_path / "vision-lora")})
    names = VIDEO_PROMPTS + ["text"]
    want = {n: hf_greedy(peft_model, llm, n) for n in names}
    base_want = {n: hf_greedy(hf, llm, n) for n in VIDEO_PROMPTS}
    prompts = [engine_prompt(n) for n in names] + [engine_prompt(n) for n in VIDEO_PROMPTS]
    adapters = ["vis"] * len(names) + [None] * len(VIDEO_PROMPTS)
    outputs = llm.generate(prompts, GREEDY, lora=adapters, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outputs]
    assert got[: len(names)] == [want[n] for n in names]
    assert got[len(names) :] == [base_want[n] for n in VIDEO_PROMPTS]
    assert want["one_video"] != base_want["one_video"]  # the adapter changes video answers
    assert_idle(llm)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [{}, {"max_num_batched_tokens": 9, "block_size": 4}])
def test_gpu_video_prompts_and_classify_match_the_cpu_reference(base, expected, options):
    """The GPU path (Triton kernels, CUDA graphs for the decode steps) in fp32, video prompts
    batched with the rest, and classify requests of a head-carrying adapter beside them."""
    _, path = base
    llm = LLM(path, device="cuda", dtype="float32", max_num_seqs=8, enable_lora=True, **options)
    llm.engine.load_dummy_adapter("act", rank=8, seed=1, num_classes=4)
    names = list(PROMPTS)
    outputs = llm.generate([engine_prompt(n) for n in names], GREEDY, use_tqdm=False)
    assert {n: o.outputs[0].token_ids for n, o in zip(names, outputs)} == expected
    heads = llm.classify([engine_prompt(n) for n in VIDEO_PROMPTS], adapter="act", use_tqdm=False)
    cpu = LLM(path, device="cpu", enable_lora=True, lora_backend="torch")
    cpu.engine.load_dummy_adapter("act", rank=8, seed=1, num_classes=4)
    want = cpu.classify([engine_prompt(n) for n in VIDEO_PROMPTS], adapter="act", use_tqdm=False)
    for got, ref in zip(heads, want):
        torch.testing.assert_close(
            torch.tensor(got.classification.probs),
            torch.tensor(ref.classification.probs),
            rtol=1e-3,
            atol=1e-4,
        )
    assert_idle(llm)
