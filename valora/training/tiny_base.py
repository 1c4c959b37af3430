"""A tiny Qwen2-VL checkpoint to fine-tune on the CPU: ``python -m valora.training.tiny_base
--out DIR`` writes transformers' ``Qwen2VLForConditionalGeneration`` at the ``tiny`` setting's
dimensions with seeded random weights, in the released checkpoint layout.

- ``--pretrain TASKS_DIR``: transformers' own initialisation, then caption pre-training of every
  weight on the suite's ``pretrain`` split (``valora.training.pretrain``; ``python -m
  valora.tasks --pretrain N`` writes it). The base learns to see and describe the suite's scenes
  but never sees a task's question or answer format, as a released base has never seen its
  adapters' tasks.
- without it: untrained, with token embeddings and the LM head drawn at unit scale. At the
  default initialisation (std 0.02) an untrained 64-wide model's logits span a few units over a
  151,936-token vocabulary, so no LoRA adapter could move the greedy answer; at unit scale one
  can (single-token answers, such as colour names, are then learnable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from valora.model_settings import MODEL_SETTINGS
from valora.training.pretrain import pretrain_base
from valora.training.sft_config import SFTConfig


def build_tiny_base(seed: int = 0, unit_embeddings: bool = True):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(**json.loads(json.dumps(dict(MODEL_SETTINGS["tiny"]), default=dict)))
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float().eval()
    if unit_embeddings:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, 1.0)
            model.lm_head.weight.normal_(0.0, 1.0)
    return model


def write_tiny_base(
    out: str | Path, seed: int = 0, pretrain: str | Path | None = None, cfg: SFTConfig | None = None
) -> Path:
    """Write the base to ``out``; with ``pretrain`` (a task-suite directory) caption-pretrain it
    with ``cfg`` (default: ``pretrain_config()``) first."""
    out = Path(out)
    build_tiny_base(seed, unit_embeddings=pretrain is None).save_pretrained(out)
    if pretrain is not None:
        pretrain_base(out, pretrain, out, cfg or pretrain_config(seed=seed))
    return out


def pretrain_config(**overrides) -> SFTConfig:
    """The caption pre-training recipe the README's numbers use."""
    values = dict(lr=3e-3, epochs=8, batch_size=8, warmup_steps=20, lr_scheduler="cosine")
    values.update(dropout=0.0, target_modules="all")  # unused: every weight trains
    return SFTConfig(**(values | overrides))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain", help="task-suite directory with pretrain.jsonl splits")
    p.add_argument("--epochs", type=int, help="pre-training passes (default: the recipe's)")
    p.add_argument("--lr", type=float, help="pre-training peak learning rate")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    cfg = pretrain_config(seed=args.seed, progress=not args.no_progress, **overrides)
    print(f"wrote {write_tiny_base(args.out, args.seed, args.pretrain, cfg)}")


if __name__ == "__main__":
    main()
