"""bitsandbytes 4-bit checkpoints, as transformers saves a ``load_in_4bit`` model (NF4 / FP4,
double quantization on or off; the vision tower quantized too): ``LLM(model=dir)`` loads them
with no flag, dequantized exactly by bitsandbytes, and generates the greedy tokens transformers
generates loading the same checkpoint and dequantizing it (``model.dequantize()``, bitsandbytes'
own dequantization). The 4-bit matmul of bitsandbytes' CPU backend itself differs from x @ W^T
by about 0.5% (seen without double quantization), so the greedy oracle runs the exact dequantized
weights; that transformers' 4-bit modules hold exactly those weights is checked first. 8-bit
checkpoints and a conflicting ``quantization`` are refused."""

from __future__ import annotations

import json

import pytest
import torch
from hf_reference import make_hf_model
from test_quantizer import assert_generates_like_transformers

from valora.llm import LLM

pytest.importorskip("bitsandbytes")


def write_bnb_checkpoint(root, quant_type: str, double: bool):
    from transformers import BitsAndBytesConfig, Qwen2VLForConditionalGeneration

    make_hf_model(tie_word_embeddings=False).save_pretrained(root / "dense")
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        str(root / "dense"), dtype=torch.float32, quantization_config=config
    )
    model.save_pretrained(root / "bnb")
    return root / "bnb"


@pytest.mark.parametrize("quant_type, double", [("nf4", True), ("nf4", False), ("fp4", True)])
def test_4bit_checkpoint_generates_like_transformers_loading_it(tmp_path, quant_type, double):
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from transformers import Qwen2VLForConditionalGeneration

    path = write_bnb_checkpoint(tmp_path, quant_type, double)
    hf = Qwen2VLForConditionalGeneration.from_pretrained(str(path))
    qkv = hf.model.visual.blocks[0].attn.qkv
    assert isinstance(qkv, Linear4bit)  # the vision tower is 4-bit too
    expected = dequantize_4bit(qkv.weight.data, qkv.weight.quant_state)
    hf.dequantize()
    assert not isinstance(hf.model.visual.blocks[0].attn.qkv, Linear4bit)
    assert torch.equal(hf.model.visual.blocks[0].attn.qkv.weight.float(), expected.float())
    llm = LLM(str(path), device="cpu")
    ours = dict(llm.engine.model.named_parameters())
    q_rows = hf.config.text_config.hidden_size
    q_proj = hf.model.language_model.layers[0].self_attn.q_proj.weight.float()
    qkv_name = next(n for n in ours if "layers.0" in n and "qkv" in n and n.endswith("weight"))
    assert torch.equal(ours[qkv_name][:q_rows].float(), q_proj)
    assert_generates_like_transformers(llm, hf)


def test_8bit_checkpoints_and_requantization_are_refused(tmp_path):
    path = write_bnb_checkpoint(tmp_path, "nf4", True)
    with pytest.raises(ValueError, match="would re-quantize"):
        LLM(str(path), device="cpu", quantization="w4a16")
    config = json.loads((path / "config.json").read_text())
    q = config["quantization_config"]
    q.update(load_in_4bit=False, _load_in_4bit=False, load_in_8bit=True, _load_in_8bit=True)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="8-bit"):
        LLM(str(path), device="cpu")
