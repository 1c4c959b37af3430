"""The trained adapter in PEFT and in valora: both load it, both give the same greedy tokens on
the training prompts (images and a video, LoRA in the language model and the vision tower), and
those tokens are the trained answers, so training and serving see the same prompts."""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_vision_inputs
from peft import PeftModel
from sft_fixture import MM_KWARGS
from transformers import Qwen2VLForConditionalGeneration

from valora.llm import LLM
from valora.sampling_params import SamplingParams
from valora.training.sft_data import engine_prompt, load_sft_jsonl

MAX_NEW = 5
# ignore_eos: an answer's <|im_end|> and a few tokens after it; transformers' side gets its EOS
# switched off the same way (min_new_tokens would suppress the EOS logit instead)
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


def hf_greedy(model, llm: LLM, prompt: dict) -> list[int]:
    """transformers' greedy tokens on the pixels and ids our processor made."""
    ids, kwargs = hf_vision_inputs(llm.engine.process_prompt(prompt), llm.engine.model_config)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=-1, **kwargs
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def served(checkpoint, dataset, trained):
    """(LLM with the adapter as "sft", the training prompts, the records)."""
    _, out = trained
    llm = LLM(checkpoint, device="cpu", lora_modules={"sft": str(out)})
    records = load_sft_jsonl(dataset)
    prompts = [engine_prompt(r, llm.tokenizer, MM_KWARGS) for r in records]
    return llm, prompts, records


def test_peft_and_valora_agree_and_answer_as_trained(checkpoint, trained, served):
    _, out = trained
    llm, prompts, records = served
    base = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    want = [hf_greedy(peft_model, llm, p) for p in prompts]
    outputs = llm.generate(prompts, GREEDY, lora="sft", use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == want
    im_end = llm.tokenizer.token_id("<|im_end|>")
    answers = [llm.tokenizer.encode(r["answer"]) + [im_end] for r in records]
    learned = [w[: len(a)] == a for w, a in zip(want, answers)]
    assert sum(learned) >= 4, learned  # memorised (5 of 5 here; margin for other BLAS builds)


def test_the_adapter_changes_the_base_answers(served):
    llm, prompts, _ = served
    with_adapter = llm.generate(prompts, GREEDY, lora="sft", use_tqdm=False)
    without = llm.generate(prompts, GREEDY, use_tqdm=False)
    changed = [
        a.outputs[0].token_ids != b.outputs[0].token_ids for a, b in zip(with_adapter, without)
    ]
    assert all(changed)
