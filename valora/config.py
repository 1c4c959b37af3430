"""Configuration dataclasses: the one home of the engine's options.

``EngineConfig`` (with its ``SchedulerConfig`` and ``LoRAConfig``) holds every engine option,
frozen and validated on construction; each field carries its command-line flag and help
(``valora.cli_fields``), so ``valora-serve`` builds these from its flags and ``LLM(model,
**kwargs)`` routes its keywords to them by field name.

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

from valora.cli_fields import option
from valora.model_settings import MODEL_SETTINGS
from valora.orchestrator import POLICIES

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
        check_architecture(d)
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
        if name not in MODEL_SETTINGS:
            known = ", ".join(sorted(MODEL_SETTINGS))
            raise ValueError(f"unknown model setting {name!r}; known settings: {known}")
        return cls.from_hf_dict(dict(MODEL_SETTINGS[name]))

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


SUPPORTED_ARCHITECTURES = ("Qwen2VLForConditionalGeneration",)
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_vl_text")  # the second: flat-layout config.json


def check_architecture(d: dict[str, Any]) -> None:
    """``ValueError`` naming the supported architectures when a config.json declares another one
    (by ``architectures`` or ``model_type``; a config that declares neither is taken as
    Qwen2-VL), before any of its fields is read."""
    architectures = list(d.get("architectures") or [])
    model_type = d.get("model_type")
    unknown = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
    if unknown or (model_type is not None and model_type not in SUPPORTED_MODEL_TYPES):
        declared = ", ".join(unknown) or f"model_type {model_type!r}"
        raise ValueError(
            f"unsupported architecture {declared}: this engine serves "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (model_type {', '.join(SUPPORTED_MODEL_TYPES)})"
        )


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
    return name in MODEL_SETTINGS


DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANT_MERGE = ("auto", "on", "off")


@dataclass(frozen=True)
class SchedulerConfig:
    """The batcher's limits and the orchestration policy (``valora.orchestrator.POLICIES``)."""

    max_num_seqs: int = option(256, "requests running at once", type=int)
    max_num_batched_tokens: int = option(8192, "tokens per step", type=int)
    max_model_len: int = option(32768, "context limit per request (prompt + output)", type=int)
    enable_chunked_prefill: bool = option(True, "split long prompts over steps")
    policy: str = option(
        "valora",
        "orchestration policy: mode choice, admission order and kernels",
        aliases=("--scheduler",),
        choices=sorted(POLICIES),
    )
    policy_options: tuple[tuple[str, object], ...] = option((), cli=False)  # policy kwargs

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_model_len < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and max_model_len must be >= 1")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {sorted(POLICIES)}")
        if isinstance(self.policy_options, dict):
            object.__setattr__(self, "policy_options", tuple(self.policy_options.items()))


@dataclass(frozen=True)
class LoRAConfig:
    max_loras: int = option(
        8, "GPU pool size, in adapters of max_lora_rank (more fit at lower ranks)", type=int
    )
    max_lora_rank: int = option(64, "largest adapter rank served", type=int)
    max_cpu_loras: int = option(64, "host copies of adapters not in use kept", type=int)
    backend: str | None = option(
        None,
        "LoRA kernels (default: the policy's)",
        flag="--lora-backend",
        choices=["atmm", "sgmv", "mbgmv", "einsum", "torch"],
    )
    towers: tuple[str, ...] = option(
        ("language", "vision"),
        "towers LoRA applies to",
        flag="--lora-towers",
        nargs="+",
        choices=["language", "vision"],
    )
    allow_pickle: bool = option(False, "accept pickled adapter_model.bin files")
    enable_prefetch: bool = option(
        True, "copy waiting requests' adapters to the GPU early", flag="--lora-prefetch"
    )

    def __post_init__(self) -> None:
        if self.max_loras < 1 or self.max_lora_rank < 1 or self.max_cpu_loras < 1:
            raise ValueError("max_loras, max_lora_rank and max_cpu_loras must be >= 1")
        if not set(self.towers) <= {"language", "vision"} or not self.towers:
            raise ValueError(f"towers must be language and/or vision, got {self.towers}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine builder (``valora.engine.builder``) needs; ``lora`` None: no LoRA
    (no pool, no LoRA layers)."""

    model: str = option(
        "tiny", "a model setting (dummy weights) or a checkpoint directory", cli=False
    )
    dtype: str = option("auto", "auto: bfloat16 on a GPU, float32 on the CPU", choices=DTYPES)
    device: str | None = option(None, "cuda or cpu (default: cuda when available)")
    num_token: int | None = option(
        None, "KV-cache budget in tokens (default: from --gpu-memory-utilization)", type=int
    )
    gpu_memory_utilization: float = option(
        0.85, "share of GPU memory the engine may use", type=float
    )
    block_size: int = option(16, "tokens per KV block", type=int)
    enable_prefix_caching: bool = option(True, "reuse KV blocks of shared prefixes")
    seed: int = option(0, "dummy-weight seed", type=int)
    enforce_eager: bool = option(False, "no CUDA graphs for decode steps")
    quantization: str = option(
        "none",
        "quantize the language model's linears (RTN); a quantized checkpoint brings its own",
        choices=["none", "w4a16", "w8a16"],
    )
    quant_merge: str = option(
        "auto",
        "merged mode on a quantized base: dense overlays of the "
        "LoRA targets (auto: where they take at most half the KV-cache "
        "memory)",
        choices=QUANT_MERGE,
    )
    mm_processor_kwargs: str = option(
        "",
        "JSON overrides of the checkpoint's image/video processor settings, e.g. "
        '\'{"max_pixels": 1003520, "fps": 1.0}\' (min_pixels, max_pixels, fps, min_frames, '
        "max_frames)",
    )
    scheduler: SchedulerConfig = option(SchedulerConfig(), cli=False)
    lora: LoRAConfig | None = option(None, cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.mm_processor_kwargs, dict):  # LLM(mm_processor_kwargs={...})
            object.__setattr__(self, "mm_processor_kwargs", json.dumps(self.mm_processor_kwargs))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.quant_merge not in QUANT_MERGE:
            raise ValueError(f"quant_merge must be auto, on or off, got {self.quant_merge!r}")
        if self.block_size < 1 or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("block_size must be >= 1 and gpu_memory_utilization in (0, 1]")

    @property
    def processor_overrides(self) -> dict:
        """``mm_processor_kwargs`` parsed (ValueError if it is not a JSON object)."""
        if not self.mm_processor_kwargs:
            return {}
        try:
            value = json.loads(self.mm_processor_kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"mm_processor_kwargs is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError("mm_processor_kwargs must be a JSON object")
        return value

    @property
    def on_gpu(self) -> bool:
        """After the builder resolved ``device`` (None: auto)."""
        return (self.device or "").startswith("cuda")
