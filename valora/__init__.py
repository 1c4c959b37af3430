"""VaLoRA: multi-adapter LoRA serving for Qwen2-VL vision-language models."""

__version__ = "0.1.0"
