"""The model an SFT run trains: a Qwen2-VL checkpoint (full precision or bitsandbytes NF4) with
fresh PEFT LoRA layers, base weights frozen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from valora.training.sft_config import SFTConfig
from valora.training.train_task_head import TrainConfig, wrap_lora

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: SFTConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(cfg: SFTConfig, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 elsewhere."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[cfg.dtype]


def require_bitsandbytes() -> None:
    """``RuntimeError`` with the fix when bitsandbytes is missing or fails to import."""
    hint = "4-bit (QLoRA) training needs bitsandbytes: pip install 'valora[train]'"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"{hint} (it is not installed)")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken install (no native library for this platform)
        raise RuntimeError(f"{hint} (importing it failed: {exc})") from exc


def load_base_model(model_dir: str | Path, cfg: SFTConfig, device: torch.device):
    """``Qwen2VLForConditionalGeneration`` on ``device``; with ``load_in_4bit`` its linear
    layers (lm_head aside) are NF4, computing in the run's dtype, and PEFT's k-bit preparation
    (norms in fp32, input grads, gradient checkpointing) has been applied."""
    from transformers import Qwen2VLForConditionalGeneration

    dtype = resolve_dtype(cfg, device)
    if not cfg.load_in_4bit:
        model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype)
        model.to(device)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        return model
    require_bitsandbytes()
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=dtype, quantization_config=quant, device_map={"": str(device)}
    )
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False},
    )


def attach_lora(model, cfg: SFTConfig):
    """The PEFT model: fresh LoRA (A random from torch's generator, B zero) on
    ``cfg.targets()``, everything else frozen. Uses the task-head trainer's ``wrap_lora``."""
    lora_cfg = TrainConfig(
        lora_r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets(),
        vision_lora=False,  # vision targets, if any, are in cfg.targets()
    )
    peft_model = wrap_lora(model, lora_cfg)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ValueError(f"no module matches target_modules {cfg.targets()}")
    return peft_model
