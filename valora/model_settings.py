"""Named model settings and experiment grids.

A *model setting* is a Qwen2-VL configuration in the Hugging Face ``config.json`` shape (the flat
v4 layout), so the same dict builds dummy weights, documents the dimensions, and can be written
next to a checkpoint. ``tiny`` is CPU-sized (tests, the demo); ``qwen2-vl-2b`` and ``qwen2-vl-7b``
carry the released checkpoints' real dimensions.

This module imports nothing: ``valora.config`` reads it (and ``exp_suite`` re-exports it for the
experiment grids).
"""

from __future__ import annotations

from types import MappingProxyType

_VISION_REAL = {
    "depth": 32,
    "embed_dim": 1280,
    "num_heads": 16,
    "mlp_ratio": 4,
    "hidden_act": "quick_gelu",
    "in_channels": 3,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
}

_TOKEN_IDS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}


def _setting(text: dict, vision: dict) -> MappingProxyType:
    cfg = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        **_TOKEN_IDS,
        **text,
        "vision_config": {**vision, "hidden_size": text["hidden_size"]},
    }
    return MappingProxyType(cfg)


MODEL_SETTINGS: MappingProxyType = MappingProxyType(
    {
        # CPU-sized, real vocabulary so the real tokenizer's ids are all valid.
        "tiny": _setting(
            {
                "vocab_size": 151936,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                "tie_word_embeddings": False,
            },
            {**_VISION_REAL, "depth": 2, "embed_dim": 32, "num_heads": 2},
        ),
        "qwen2-vl-2b": _setting(
            {
                "vocab_size": 151936,
                "hidden_size": 1536,
                "intermediate_size": 8960,
                "num_hidden_layers": 28,
                "num_attention_heads": 12,
                "num_key_value_heads": 2,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                "tie_word_embeddings": True,
            },
            _VISION_REAL,
        ),
        "qwen2-vl-7b": _setting(
            {
                "vocab_size": 152064,
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                "tie_word_embeddings": False,
            },
            _VISION_REAL,
        ),
    }
)
