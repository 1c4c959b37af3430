"""Build transformers' Qwen2-VL on random weights and save it in each checkpoint layout in use."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

import exp_suite

LAYOUTS = {
    # (weight naming, config.json shape, sharded?)
    "original-flat-single": ("original", "flat", False),
    "language_model-nested-sharded": ("language_model", "nested", True),
}


def make_hf_model(tie_word_embeddings: bool, seed: int = 0) -> Qwen2VLForConditionalGeneration:
    """The tiny setting with every parameter random (biases and norm scales included)."""
    setting = dict(exp_suite.MODEL_SETTINGS["tiny"])
    setting["tie_word_embeddings"] = tie_word_embeddings
    config = Qwen2VLConfig(**json.loads(json.dumps(setting)))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm_scale = "norm" in name or "ln_q" in name
            if is_norm_scale and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.05 * torch.randn_like(param))
    model.tie_weights()
    return model


def save_checkpoint(model: Qwen2VLForConditionalGeneration, out: Path, layout: str) -> Path:
    naming, config_shape, sharded = LAYOUTS[layout]
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        _rename(k, naming): v.detach().clone().contiguous() for k, v in model.state_dict().items()
    }
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    _write_weights(tensors, out, sharded)
    config = model.config.to_dict()
    (out / "config.json").write_text(
        json.dumps(_flatten(config) if config_shape == "flat" else config)
    )
    return out


def _rename(name: str, naming: str) -> str:
    """transformers' module names are the 4.52+ layout; 'original' is the release layout."""
    if naming == "language_model":
        return name
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def _write_weights(tensors: dict, out: Path, sharded: bool) -> None:
    if not sharded:
        save_file(tensors, str(out / "model.safetensors"))
        return
    names = sorted(tensors)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in shard}, str(out / file))
        weight_map.update({n: file for n in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _flatten(config: dict) -> dict:
    """v5 nested config -> the flat v4 shape (text fields at top level, rope_scaling)."""
    flat = {k: v for k, v in config.items() if k != "text_config"}
    text = dict(config["text_config"])
    rope = text.pop("rope_parameters")
    flat.update(text)
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["vision_config"] = {
        k: v for k, v in config["vision_config"].items() if k != "rope_parameters"
    }
    return flat


def hf_greedy(model, prompt_name: str, max_new: int, image_token_id: int) -> list[int]:
    """Greedy tokens of transformers' (or PEFT's) ``generate`` for one shared test prompt."""
    from test_parity_hf import build_prompt

    from valora.tokenizer import Tokenizer

    ids, images = build_prompt(Tokenizer.builtin(), prompt_name, image_token_id)
    input_ids = torch.tensor([ids])
    kwargs = {}
    if images:
        kwargs["pixel_values"] = torch.cat([im.pixel_values for im in images])
        kwargs["image_grid_thw"] = torch.tensor([im.grid_thw for im in images])
        kwargs["mm_token_type_ids"] = (input_ids == image_token_id).int()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            do_sample=False,
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


def hf_vision_inputs(processed, model_config) -> tuple[torch.Tensor, dict]:
    """(input_ids [1, L], the HF model's vision kwargs) for one of our processed prompts: the
    pixels our processor made per modality, their grids, and ``mm_token_type_ids`` (0 text,
    1 image, 2 video; without it transformers 5 silently uses 1-D positions)."""
    ids = torch.tensor([processed.token_ids])
    is_image = (ids == model_config.image_token_id).int()
    kwargs = {"mm_token_type_ids": is_image + 2 * (ids == model_config.video_token_id).int()}
    for kind, pixels, grids in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        items = [v for v in processed.images if v.modality == kind]
        if items:
            kwargs[pixels] = torch.cat([v.pixel_values for v in items])
            kwargs[grids] = torch.tensor([v.grid_thw for v in items])
    return ids, kwargs
