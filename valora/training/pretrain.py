"""Caption pre-training of a base checkpoint: every weight trained (no LoRA) on the task suite's
``pretrain`` split ("Describe the image." -> a scene caption; ``python -m valora.tasks
--pretrain N`` writes it).

This stands in for the pre-training a released Qwen2-VL has had: the vision tower learns to see
colours, shapes, digits and motion, and the language model learns to talk about them, but never
sees a task's question or answer format, so the adapters still have each task to learn. The loop,
batching and answer-only loss are the SFT run's (``SFTLoop``); there are no checkpoints and no
resume (a pre-training run on the CPU takes minutes).

Only the tokens the captions use get trained rows in the embedding table and the LM head; an
adapter on a small pre-trained base can hardly make it emit a token the captions never used (a
released base has trained every row), so captions are worded in the answers' vocabulary.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from valora.training.sft import load_records, make_optimizer, processor_batch_encoder
from valora.training.sft_checkpoint import LossLog
from valora.training.sft_config import SFTConfig
from valora.training.sft_loop import SFTLoop, StepPlan
from valora.training.sft_model import load_base_model, resolve_device

PRETRAIN_SPLIT = "pretrain.jsonl"


def pretrain_records(tasks_dir: str | Path) -> list[dict]:
    """Every task's ``pretrain.jsonl`` under ``tasks_dir``, media paths made absolute."""
    paths = sorted(Path(tasks_dir).glob(f"*/{PRETRAIN_SPLIT}"))
    if not paths:
        raise ValueError(
            f"no */{PRETRAIN_SPLIT} under {tasks_dir}: generate the suite with "
            "python -m valora.tasks --pretrain N"
        )
    return [record for path in paths for record in load_records(path)]


def pretrain_base(
    model_dir: str | Path, tasks_dir: str | Path, out_dir: str | Path, cfg: SFTConfig
) -> list[float]:
    """Train every weight of ``model_dir`` on ``tasks_dir``'s captions; write the checkpoint
    (weights, config, processor files untouched) to ``out_dir``; -> the loss of each step."""
    if cfg.load_in_4bit or cfg.resume or cfg.save_every:
        raise ValueError("pre-training takes no 4-bit base, checkpoints or resume")
    records = pretrain_records(tasks_dir)
    device = resolve_device(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = load_base_model(model_dir, cfg, device)
    model.requires_grad_(True)
    collate_fn = processor_batch_encoder(model_dir, model.config, cfg)
    plan = StepPlan(len(records), cfg.batch_size, cfg.grad_accum, cfg.epochs)
    optimizer, scheduler = make_optimizer(model, cfg, plan.total_steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loop = SFTLoop(model, optimizer, scheduler, records, collate_fn, cfg, out)
    losses = loop.run(0, LossLog(out, keep_up_to=0), {})
    model.eval().save_pretrained(out)
    return losses
