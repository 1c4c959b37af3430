"""HF + PEFT references for the engine's LoRA tests: real PEFT adapters of different ranks on
transformers' tiny Qwen2-VL, saved with ``save_pretrained``, and their greedy tokens per prompt."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hf_reference import hf_greedy, make_hf_model, save_checkpoint
from peft import LoraConfig, get_peft_model

LM = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "merger.mlp.0", "merger.mlp.2"]

# four adapters of different ranks, scalings and targets; two train the vision tower too
ADAPTERS = {
    "r8-all": dict(r=8, lora_alpha=16, target_modules=LM),
    "r16-qv-down-rslora": dict(
        r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]
    ),
    "r4-lm-vision": dict(r=4, lora_alpha=4, target_modules=LM + VISION),
    "r32-pattern-vision": dict(
        r=32,
        lora_alpha=64,
        rank_pattern={"up_proj": 8},
        alpha_pattern={"up_proj": 4},
        target_modules=["o_proj", "gate_proj", "up_proj", "attn.qkv", "mlp.fc1"],
    ),
}
MAX_NEW = 6


def build_references(root: Path, prompts: list[str], adapters: dict = ADAPTERS):
    """-> (checkpoint dir, {adapter: dir}, {(adapter or None, prompt): greedy token ids})."""
    hf = make_hf_model(tie_word_embeddings=False)
    ckpt = save_checkpoint(hf, root / "base", "original-flat-single")
    models = {None: hf}
    dirs = {}
    for i, (name, options) in enumerate(adapters.items()):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(
            copy.deepcopy(hf), LoraConfig(init_lora_weights=False, **options)
        )
        dirs[name] = root / name
        peft_model.save_pretrained(dirs[name])
        models[name] = peft_model.eval()
    expected = {}
    for name, model in models.items():
        for prompt in prompts:
            expected[(name, prompt)] = hf_greedy(model, prompt, MAX_NEW, hf.config.image_token_id)
    return str(ckpt), {k: str(v) for k, v in dirs.items()}, expected
