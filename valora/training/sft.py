"""LoRA supervised fine-tuning (SFT) of a Qwen2-VL checkpoint on the task-suite JSONL format.

    from valora.training.sft import SFTConfig, train_lora
    result = train_lora("ckpt/", "suite/train.jsonl", "out/adapter", SFTConfig(rank=16))
    LLM("ckpt/", lora_modules={"mine": "out/adapter"})  # serve it

Each example's prompt is the chat template over its ``messages`` (images and videos processed
by ``valora.multimodal`` / ``valora.video`` with the checkpoint's processor settings, exactly as
the engine will see them when serving); the target is the answer and ``<|im_end|>``; the loss
covers the target tokens only (``sft_data``). The model is transformers'
``Qwen2VLForConditionalGeneration`` (fp32 on CPU, bf16 on CUDA, or NF4 base weights for QLoRA)
run with ``mm_token_type_ids`` so M-RoPE positions are the engine's (``sft_model``). The output
directory receives a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``),
``loss_log.jsonl`` and, with ``save_every``, ``checkpoint-<step>/`` directories
(``sft_checkpoint``).

Why a plain PyTorch loop rather than transformers' ``Trainer``: (1) a batch's vision inputs are
not batch-major tensors (``pixel_values`` concatenates a variable number of patches per image,
``image_grid_thw`` has one row per image, not per example), so Trainer's default collation,
column pruning and per-device batch splitting do not apply and each would need overriding;
(2) the loss is the mean over all answer tokens of an accumulated step and skips the prompt's
logits (``logits_to_keep``), both custom ``compute_loss`` work; (3) exact resumption (same batches,
dropout masks and learning rates, checked to 1e-6 by the tests) is short to guarantee here
(``sft_loop``: the batch order is a function of (seed, epoch)) and harder to audit through
Trainer + accelerate's data-loader skipping. The loop is the few dozen lines of ``SFTLoop``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from valora.processor_config import load_processor_configs
from valora.training.sft_checkpoint import (
    LossLog,
    list_checkpoints,
    load_checkpoint,
    save_peft_adapter,
)
from valora.training.sft_config import SFTConfig, SFTResult
from valora.training.sft_data import EncodeBatch, check_records, load_sft_jsonl
from valora.training.sft_loop import SFTLoop, StepPlan
from valora.training.sft_model import attach_lora, load_base_model, resolve_device

__all__ = ["SFTConfig", "SFTResult", "load_records", "train_lora"]

_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def load_records(data: str | Path | Sequence[dict], root: str | Path | None = None) -> list[dict]:
    """A JSONL path, or records already parsed (media paths relative to ``root``, default the
    working directory) -> checked records with absolute media paths."""
    if isinstance(data, (str, Path)):
        return load_sft_jsonl(data)
    return check_records(data, Path(root or "."))


def train_lora(
    model_dir: str | Path,
    data: str | Path | Sequence[dict],
    out_dir: str | Path,
    cfg: SFTConfig | None = None,
) -> SFTResult:
    """Fine-tune a LoRA adapter on ``data`` (see ``load_records``) and write it to ``out_dir``.
    With ``cfg.resume`` the newest ``out_dir/checkpoint-<step>`` is continued exactly; without
    it, an ``out_dir`` holding checkpoints is refused (they would mix with this run's)."""
    cfg = cfg or SFTConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(data)
    checkpoints = list_checkpoints(out)
    if checkpoints and not cfg.resume:
        raise ValueError(f"{out} holds checkpoints of an earlier run: pass resume or clear it")
    device = resolve_device(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the LoRA A matrices' initialisation
    model = load_base_model(model_dir, cfg, device)
    collate_fn = processor_batch_encoder(model_dir, model.config, cfg)
    model = attach_lora(model, cfg)
    plan = StepPlan(len(records), cfg.batch_size, cfg.grad_accum, cfg.epochs)
    optimizer, scheduler = make_optimizer(model, cfg, plan.total_steps)
    meta = {"config": cfg.trajectory(), "num_examples": len(records)}
    start = 0
    if checkpoints:  # resume
        start = load_checkpoint(checkpoints[-1], model, optimizer, scheduler, meta)
    loop = SFTLoop(model, optimizer, scheduler, records, collate_fn, cfg, out)
    losses = loop.run(start, LossLog(out, keep_up_to=start), meta)
    steps = start + len(losses)
    if steps == plan.total_steps:
        save_peft_adapter(model, out)
    return SFTResult(
        losses=losses,
        steps=steps,
        out_dir=out,
        num_examples=len(records),
        total_steps=plan.total_steps,
        resumed_from=start if checkpoints else None,
        checkpoints=loop.checkpoints,
    )


def processor_batch_encoder(model_dir: str | Path, model_config, cfg: SFTConfig) -> EncodeBatch:
    """The DataLoader collate function: the checkpoint's tokenizer and processor settings
    (with ``cfg.mm_processor_kwargs`` on top), as the engine uses them."""
    image_cfg, video_cfg = load_processor_configs(model_dir, dict(cfg.mm_processor_kwargs or {}))
    return EncodeBatch(model_dir, model_config, image_cfg, video_cfg)


def make_optimizer(model, cfg: SFTConfig, total_steps: int):
    """AdamW over the trainable parameters, and the learning-rate schedule."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        _SCHEDULERS[cfg.lr_scheduler],
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=total_steps,
    )
    return optimizer, scheduler
