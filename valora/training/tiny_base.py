"""A tiny Qwen2-VL checkpoint to fine-tune on the CPU: ``python -m valora.training.tiny_base
--out DIR`` writes transformers' ``Qwen2VLForConditionalGeneration`` at the ``tiny`` setting's
dimensions with seeded random weights, in the released checkpoint layout.

Token embeddings and the LM head are drawn at unit scale. At transformers' default initialisation
(std 0.02) a 64-wide model's logits span a few units over a 151,936-token vocabulary, so no LoRA
adapter can move the greedy answer; at unit scale a rank-16 adapter learns the task suite's
answers within minutes. Nothing else is pre-trained: the base answers the tasks at chance or below.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from valora.model_settings import MODEL_SETTINGS


def build_tiny_base(seed: int = 0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(**json.loads(json.dumps(dict(MODEL_SETTINGS["tiny"]))))
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 1.0)
    return model


def write_tiny_base(out: str | Path, seed: int = 0) -> Path:
    out = Path(out)
    build_tiny_base(seed).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"wrote {write_tiny_base(args.out, args.seed)}")


if __name__ == "__main__":
    main()
