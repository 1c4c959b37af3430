"""QLoRA: NF4 base weights (bitsandbytes, here on CPU) train a couple of steps and save a plain
LoRA adapter that valora serves; without bitsandbytes the run is refused with the fix."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from sft_fixture import MM_KWARGS, TRAINED

from valora.llm import LLM
from valora.sampling_params import SamplingParams
from valora.training import sft_model
from valora.training.sft import train_lora
from valora.training.sft_data import engine_prompt, load_sft_jsonl


def bitsandbytes_runs_here() -> bool:
    """Whether an NF4 linear layer quantizes and runs forward on the CPU."""
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        layer.load_state_dict(torch.nn.Linear(64, 64).state_dict())
        return bool(torch.isfinite(layer.to("cpu")(torch.randn(2, 64))).all())
    except Exception:
        return False


@pytest.mark.skipif(not bitsandbytes_runs_here(), reason="bitsandbytes NF4 cannot run here")
def test_qlora_trains_and_valora_serves_the_adapter(checkpoint, dataset, tmp_path):
    cfg = replace(TRAINED, load_in_4bit=True, epochs=2, batch_size=3, dropout=0.05)
    result = train_lora(checkpoint, dataset, tmp_path, cfg)
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if ".lora_B." in k)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == cfg.rank
    llm = LLM(checkpoint, device="cpu", lora_modules={"q": str(tmp_path)})
    prompts = [engine_prompt(r, llm.tokenizer, MM_KWARGS) for r in load_sft_jsonl(dataset)]
    outputs = llm.generate(
        prompts, SamplingParams(temperature=0, max_tokens=3), lora="q", use_tqdm=False
    )
    assert all(o.outputs[0].token_ids for o in outputs)


def test_4bit_without_bitsandbytes_is_refused(checkpoint, dataset, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        sft_model.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(RuntimeError, match="needs bitsandbytes: pip install 'valora\\[train\\]'"):
        train_lora(checkpoint, dataset, tmp_path, replace(TRAINED, load_in_4bit=True))
