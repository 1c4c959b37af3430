"""Task-head classification through the engine against a torch reference on HF's hidden states:
an HF + PEFT adapter (vision tower included) with a head saved next to it; video, image and text
prompts classified in one batch beside generation requests of other adapters; the probabilities
equal ``head_reference_probs`` of the last prompt token's final hidden state (HF + PEFT) within
fp32 tolerance. Classify requests free their KV blocks at once and never decode."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_reference import hf_vision_inputs, make_hf_model, save_checkpoint
from peft import LoraConfig, get_peft_model
from prompts import noise_image
from video_files import IMAGE, VIDEO, chat, noise_video

from valora.adapters.task_head import TaskHeadSpec, head_reference_probs, save_task_head
from valora.llm import LLM
from valora.sampling_params import SamplingParams

SMALL = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 16}
LABELS = ("walk", "run", "jump")
PROMPTS = [
    {"prompt": chat(f"{VIDEO}Action?"), "multi_modal_data": {"video": [noise_video(4, 56, 84, 1)]}},
    {"prompt": chat(f"{IMAGE}Scene?"), "multi_modal_data": {"image": [noise_image(56, 84, 2)]}},
    chat("Just text."),
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    hf = make_hf_model(tie_word_embeddings=False)
    base = str(save_checkpoint(hf, root / "base", "original-flat-single"))
    torch.manual_seed(3)
    targets = ["q_proj", "v_proj", "attn.qkv", "mlp.fc2"]
    peft_model = get_peft_model(
        copy.deepcopy(hf),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets),
    ).eval()
    peft_model.save_pretrained(root / "act")
    hidden = hf.config.text_config.hidden_size
    spec = TaskHeadSpec(layers=((hidden, 32), (32, len(LABELS))), labels=LABELS, hidden_size=hidden)
    state = {
        "layers.0.weight": torch.randn(32, hidden),
        "layers.0.bias": torch.randn(32),
        "layers.1.weight": torch.randn(len(LABELS), 32),
        "layers.1.bias": torch.randn(len(LABELS)),
    }
    save_task_head(state, spec, root / "act")
    return base, str(root / "act"), peft_model


def hf_last_hidden(peft_model, llm: LLM, prompt) -> torch.Tensor:
    """The last prompt token's final hidden state (after the final norm), HF + PEFT."""
    prompt = {"prompt": prompt} if isinstance(prompt, str) else prompt
    processed = llm.engine.process_prompt({**prompt, "mm_processor_kwargs": SMALL})
    ids, kwargs = hf_vision_inputs(processed, llm.engine.model_config)
    with torch.no_grad():
        out = peft_model.get_base_model().model(input_ids=ids, **kwargs)
    return out.last_hidden_state[0, -1]


@pytest.mark.parametrize(
    "options", [{}, {"max_num_batched_tokens": 9, "block_size": 4}], ids=["default", "chunked"]
)
def test_head_probabilities_match_hf_peft_in_a_mixed_batch(adapter, options):
    base, head_dir, peft_model = adapter
    llm = LLM(base, device="cpu", lora_modules={"act": head_dir}, num_dummy_adapters=1, **options)
    engine = llm.engine
    assert engine.task_labels("act") == list(LABELS) and engine.task_labels("lora0") is None
    prompts = [{**p, "mm_processor_kwargs": SMALL} if isinstance(p, dict) else p for p in PROMPTS]
    # classify requests and generation requests of another adapter share the steps
    for i, prompt in enumerate(prompts):
        engine.add_request(f"c{i}", prompt, adapter="act", classify=True)
        engine.add_request(f"g{i}", prompt, SamplingParams(temperature=0, max_tokens=3), "lora0")
    done = {}
    steps = 0
    while engine.has_unfinished():
        steps += 1
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    for i, prompt in enumerate(PROMPTS):
        got = done[f"c{i}"].classification
        want = head_reference_probs(hf_last_hidden(peft_model, llm, prompt)[None], head_dir)[0]
        torch.testing.assert_close(torch.tensor(got.probs), want, rtol=1e-4, atol=1e-5)
        assert got.label == LABELS[int(want.argmax())] and got.labels == list(LABELS)
        assert done[f"c{i}"].outputs[0].token_ids == []  # nothing decoded
        assert len(done[f"g{i}"].outputs[0].token_ids) == 3
    engine.check_invariants()
    assert engine.snapshot().is_idle


def test_llm_classify_and_errors(adapter):
    base, head_dir, _ = adapter
    llm = LLM(base, device="cpu", lora_modules={"act": head_dir}, num_dummy_adapters=1)
    outs = llm.classify([chat("a"), chat("b")], adapter="act", use_tqdm=False)
    assert [o.classification.num_classes for o in outs] == [3, 3]
    with pytest.raises(ValueError, match="no task head"):
        llm.classify(chat("a"), adapter="lora0", use_tqdm=False)
    with pytest.raises(ValueError, match="needs an adapter"):
        llm.engine.add_request("x", chat("a"), classify=True)
    assert llm.engine.snapshot().is_idle
