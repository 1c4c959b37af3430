"""The W4A16 / W8A16 engine (tiny config, CPU, fp32) against transformers' ``generate`` on the
dequantized weights: the same greedy tokens for text and image prompts; LoRA on top."""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_greedy, make_hf_model, save_checkpoint
from prompts import CONVERSATIONS, conversation_images

from valora.llm import LLM
from valora.quant.convert import PIECES_OF, lm_linears
from valora.quant.linear import QuantLinear
from valora.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def load_dequantized_into(hf, engine_model) -> None:
    """Copy our quantized LM linears, dequantized, into transformers' model."""
    with torch.no_grad():
        for path, module in lm_linears(engine_model):
            assert isinstance(module, QuantLinear)
            parent, _, fused = path.rpartition(".")
            weight, offsets = module.weight.float(), module.output_offsets
            for j, piece in enumerate(PIECES_OF[fused]):
                target = hf.get_submodule(f"model.language_model.{parent[6:]}.{piece}")
                target.weight.copy_(weight[offsets[j] : offsets[j + 1]])


@pytest.mark.parametrize("method", ["w4a16", "w8a16"])
def test_quantized_engine_matches_transformers_on_dequantized_weights(tmp_path, method):
    hf = make_hf_model(tie_word_embeddings=False)
    ckpt = save_checkpoint(hf, tmp_path / "ckpt", "original-flat-single")
    llm = LLM(str(ckpt), device="cpu", quantization=method)
    before = {n: p.clone() for n, p in hf.named_parameters()}
    load_dequantized_into(hf, llm.engine.model)
    changed = [n for n, p in hf.named_parameters() if not torch.equal(before[n], p)]
    assert changed  # the quantization error is real: the reference moved with it
    template = llm.tokenizer.apply_chat_template
    prompts = [{"prompt": template(CONVERSATIONS[n][0]),
                "multi_modal_data": {"image": conversation_images(n)}}
               for n in CONVERSATIONS]  # fmt: skip
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    for name, out in zip(CONVERSATIONS, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, name, 6, hf.config.image_token_id), name


def test_lora_on_a_quantized_base_runs_unmerged():
    llm = LLM("tiny", device="cpu", quantization="w4a16", num_dummy_adapters=2,
              lora_backend="torch")  # fmt: skip
    outs = llm.generate(["a", "b", "c"], GREEDY, lora=["lora0", "lora1", None], use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
    assert isinstance(llm.engine.model.model.layers[0].mlp.down_proj.base, QuantLinear)


def test_merging_policies_on_a_quantized_base_run_unmerged_and_stay_exact():
    """No dense copy to merge into yet: the merge plans are not carried out, and the tokens
    equal the always-unmerged engine's."""
    kwargs = dict(device="cpu", quantization="w4a16", num_dummy_adapters=2, lora_backend="torch")
    prompts, lora = ["a", "b", "c", "d"], ["lora0", "lora0", "lora0", "lora1"]
    plain = LLM("tiny", **kwargs).generate(prompts, GREEDY, lora=lora, use_tqdm=False)
    merging = LLM("tiny", scheduler="valora", policy_options={"force_mode": "mixture"}, **kwargs)
    outs = merging.generate(prompts, GREEDY, lora=lora, use_tqdm=False)
    assert merging.engine.lora.merger is None and merging.engine.lora.num_switches == 0
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in plain]
