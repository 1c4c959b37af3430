"""Configuration dataclasses.

``ModelConfig`` is parsed from a Hugging Face ``config.json`` in either shape in use:
the flat v4 layout (text fields at the top level, ``rope_scaling``) and the v5 layout
(text fields under ``text_config``, ``rope_parameters``). It is the single source of every model
dimension the rest of the code reads.

Invariant: this is the only module that may read environment variables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import exp_suite

_TEXT_DEFAULTS = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    hidden_act: str
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int  # merger output width = the language model's hidden size
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        """Flattened length of one pixel patch: C * T * P * P (1176 for Qwen2-VL)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], text_hidden_size: int) -> VisionConfig:
        rope = d.get("rope_parameters") or {}
        return cls(
            depth=int(d.get("depth", 32)),
            embed_dim=int(d.get("embed_dim", 1280)),
            num_heads=int(d.get("num_heads", 16)),
            mlp_ratio=float(d.get("mlp_ratio", 4)),
            hidden_act=d.get("hidden_act", "quick_gelu"),
            in_channels=int(d.get("in_channels", d.get("in_chans", 3))),
            patch_size=int(d.get("patch_size", 14)),
            temporal_patch_size=int(d.get("temporal_patch_size", 2)),
            spatial_merge_size=int(d.get("spatial_merge_size", 2)),
            out_hidden_size=int(d.get("hidden_size", text_hidden_size)),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Qwen2-VL dimensions, token ids and M-RoPE layout."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_act: str
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    max_position_embeddings: int
    tie_word_embeddings: bool
    vision: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    eos_token_ids: tuple[int, ...] = (151645, 151643)
    quantization_config: dict | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        text = {**_TEXT_DEFAULTS, **d, **(d.get("text_config") or {})}
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "mrope"))
        if rope_type not in ("mrope", "default"):
            raise ValueError(f"unsupported rope type {rope_type!r}: Qwen2-VL uses M-RoPE")
        if text.get("use_sliding_window"):
            raise ValueError("sliding-window attention is not supported (use_sliding_window=true)")
        cfg = cls(
            vocab_size=int(text["vocab_size"]),
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
            num_hidden_layers=int(text["num_hidden_layers"]),
            num_attention_heads=int(text["num_attention_heads"]),
            num_key_value_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
            hidden_act=text["hidden_act"],
            rms_norm_eps=float(text["rms_norm_eps"]),
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
            mrope_section=tuple(int(s) for s in rope.get("mrope_section", (16, 24, 24))),
            max_position_embeddings=int(text["max_position_embeddings"]),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", text["tie_word_embeddings"])),
            vision=VisionConfig.from_hf_dict(
                d.get("vision_config") or {}, int(text["hidden_size"])
            ),
            image_token_id=int(d.get("image_token_id", 151655)),
            video_token_id=int(d.get("video_token_id", 151656)),
            vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(d.get("vision_end_token_id", 151653)),
            eos_token_ids=_eos_ids(text.get("eos_token_id")),
            quantization_config=d.get("quantization_config"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must sum to "
                f"head_dim/2 = {self.head_dim // 2}"
            )
        if self.vision.out_hidden_size != self.hidden_size:
            raise ValueError("vision_config.hidden_size must equal the language model hidden_size")
        if self.vision.head_dim % 4:
            raise ValueError("vision head_dim must be divisible by 4 (2-D rotary over h and w)")

    @classmethod
    def from_setting(cls, name: str) -> ModelConfig:
        if name not in exp_suite.MODEL_SETTINGS:
            known = ", ".join(sorted(exp_suite.MODEL_SETTINGS))
            raise ValueError(f"unknown model setting {name!r}; known settings: {known}")
        return cls.from_hf_dict(dict(exp_suite.MODEL_SETTINGS[name]))

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> ModelConfig:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        d = json.loads(config_file.read_text())
        legacy = Path(path) / "quantize_config.json"  # older GPTQ checkpoints keep it apart
        if "quantization_config" not in d and legacy.is_file():
            d["quantization_config"] = json.loads(legacy.read_text())
        return cls.from_hf_dict(d)


def _eos_ids(eos: int | list[int] | None) -> tuple[int, ...]:
    """The instruct checkpoints stop on <|im_end|> and <|endoftext|>; keep both, config's first."""
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    for default in (151645, 151643):
        if default not in ids:
            ids.append(default)
    return tuple(ids)


def triton_interpreter_enabled() -> bool:
    """Triton kernels can run on the CPU only in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def is_model_setting(name: str) -> bool:
    return name in exp_suite.MODEL_SETTINGS
