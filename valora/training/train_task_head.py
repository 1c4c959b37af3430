"""Train a LoRA adapter and a vision task head jointly, with transformers + PEFT.

    python -m valora.training.train_task_head --model <hf checkpoint dir> --data <dir> \
        --out <adapter dir> [--epochs 8 --batch-size 8 --lr 5e-4 --vision-lora ...]

Data (``--data``): ``labels.json`` (a list of label strings) and ``examples.jsonl``, one JSON
object a line: ``{"prompt": ..., "image": "file.png" | null, "video": "file.mp4" | null,
"label": "name"}``; the prompt holds one ``<|image_pad|>`` per image and one ``<|video_pad|>``
per video (chat-templated or raw text), media paths are relative to the data directory.

Per example: the prompt is tokenized and its placeholders expanded (``valora.multimodal`` for
images, ``valora.video.process_video`` for videos), ``Qwen2VLForConditionalGeneration`` runs with
``output_hidden_states=True`` and ``mm_token_type_ids`` (0 text, 1 image, 2 video; without them
transformers 5 silently falls back to 1-D positions), and the head reads
``hidden_states[-1]`` at the last prompt token. In transformers 5 that entry is the final norm's
output (``capture_outputs(tie_last_hidden_states=True)`` replaces the last decoder layer's
output with ``last_hidden_state``, which Qwen2VLTextModel takes after ``self.norm``), i.e.
exactly what the engine hands its final norm's output to. Loss: cross-entropy; AdamW over the
LoRA and head parameters. The output directory receives the PEFT adapter files and the head.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from valora.adapters.task_head import ACTIVATIONS, TaskHead, TaskHeadSpec, save_task_head
from valora.tokenizer import Tokenizer
from valora.training.task_data import (  # noqa: F401 (re-exported: the trainer's data API)
    Example,
    collate,
    encode_example,
    load_dataset,
    split_held_out,
)

LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
VISION_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 8
    lr: float = 5e-4  # LoRA parameters
    head_lr: float | None = None  # head parameters; None: ``lr``
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = LM_TARGETS
    vision_lora: bool = False  # also train VISION_TARGETS in the vision tower
    head_hidden: int = 2048  # Linear(hidden, head_hidden) -> Linear(head_hidden, C); 0: one Linear
    activation: str = "gelu"
    held_out: float = 0.25  # fraction of each label's examples kept out of training
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu


@dataclass
class TrainResult:
    train_accuracy: float
    held_out_accuracy: float
    num_train: int
    num_held_out: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    out_dir: Path | None = None


def last_hidden(model, kwargs: dict, last_index: torch.Tensor) -> torch.Tensor:
    """The final-norm hidden state at each row's last prompt token: [B, hidden]."""
    out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]  # [B, L, hidden], after the final norm (see module doc)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def build_head_spec(labels: list[str], hidden_size: int, cfg: TrainConfig) -> TaskHeadSpec:
    dims = [hidden_size] + ([cfg.head_hidden] if cfg.head_hidden else []) + [len(labels)]
    layers = list(zip(dims[:-1], dims[1:]))
    return TaskHeadSpec(layers, labels, hidden_size, activation=cfg.activation)


def wrap_lora(model, cfg: TrainConfig):
    """The model with fresh PEFT LoRA on ``cfg.target_modules`` (+ the vision tower's), base
    frozen."""
    from peft import LoraConfig, get_peft_model

    targets = list(cfg.target_modules) + (list(VISION_TARGETS) if cfg.vision_lora else [])
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
    )
    return get_peft_model(model, lora)


@torch.no_grad()
def accuracy(model, head: TaskHead, encoded: list[dict], cfg: TrainConfig, device) -> float:
    if not encoded:
        return float("nan")
    model.eval()
    correct = 0
    for start in range(0, len(encoded), cfg.batch_size):
        kwargs, last, labels = collate(encoded[start : start + cfg.batch_size], device)
        correct += int((head(last_hidden(model, kwargs, last)).argmax(-1) == labels).sum())
    return correct / len(encoded)


def fit(model, head: TaskHead, train: list[dict], cfg: TrainConfig, device) -> list[float]:
    """AdamW over the trainable LoRA and the head parameters -> mean loss per epoch."""
    lora_params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": lora_params, "lr": cfg.lr}]
    groups.append({"params": list(head.parameters()), "lr": cfg.head_lr or cfg.lr})
    optimizer = torch.optim.AdamW(groups)
    rng = random.Random(cfg.seed)
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="training", leave=False):
        model.train()
        order = list(train)
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            kwargs, last, labels = collate(order[start : start + cfg.batch_size], device)
            loss = F.cross_entropy(head.logits(last_hidden(model, kwargs, last)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
        losses.append(total / max(len(order), 1))
    return losses


def train_task_head(
    model, tokenizer: Tokenizer, data_dir: str | Path, out_dir: str | Path | None, cfg: TrainConfig
) -> TrainResult:
    """Train LoRA + head on a loaded fp32 ``Qwen2VLForConditionalGeneration`` (wrapped in place
    by PEFT); save both into ``out_dir`` unless None."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    labels, examples = load_dataset(data_dir)
    torch.manual_seed(cfg.seed)
    encoded = [encode_example(e, tokenizer, model.config) for e in examples]
    train, held = split_held_out(encoded, [e["label"] for e in encoded], cfg.held_out, cfg.seed)
    hidden_size = model.config.get_text_config().hidden_size
    spec = build_head_spec(labels, hidden_size, cfg)
    head = TaskHead(spec).to(device)
    model = wrap_lora(model.float().to(device), cfg)
    losses = fit(model, head, train, cfg, device)
    result = TrainResult(
        accuracy(model, head, train, cfg, device),
        accuracy(model, head, held, cfg, device),
        len(train),
        len(held),
        losses,
    )
    if out_dir is not None:
        result.out_dir = save_adapter(model, head, spec, out_dir)
    return result


def save_adapter(peft_model, head: TaskHead, spec: TaskHeadSpec, out_dir: str | Path) -> Path:
    """PEFT adapter files (no base weights; PEFT's generated README.md dropped) + the head."""
    out = Path(out_dir)
    had_readme = (out / "README.md").exists()
    peft_model.save_pretrained(str(out))
    if not had_readme and (out / "README.md").exists():
        (out / "README.md").unlink()
    return save_task_head(head, spec, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face Qwen2-VL checkpoint directory")
    p.add_argument("--data", required=True, help="directory with labels.json + examples.jsonl")
    p.add_argument("--out", required=True, help="adapter directory to write")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="LoRA learning rate")
    p.add_argument("--head-lr", type=float, default=None, help="head learning rate (--lr)")
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    p.add_argument("--target-modules", nargs="+", default=list(d.target_modules))
    p.add_argument("--vision-lora", action="store_true", help=f"also {', '.join(VISION_TARGETS)}")
    p.add_argument("--head-hidden", type=int, default=d.head_hidden, help="0: one Linear")
    p.add_argument("--activation", default=d.activation, choices=list(ACTIVATIONS))
    p.add_argument("--held-out", type=float, default=d.held_out, help="held-out fraction")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> TrainResult:
    from transformers import Qwen2VLForConditionalGeneration

    args = parse_args(argv)
    cfg = TrainConfig(
        **{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if k != "target_modules"},
        target_modules=tuple(args.target_modules),
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    result = train_task_head(model, Tokenizer.load(args.model), args.data, args.out, cfg)
    print(
        f"train accuracy {result.train_accuracy:.3f} ({result.num_train} examples), "
        f"held-out accuracy {result.held_out_accuracy:.3f} ({result.num_held_out} examples); "
        f"adapter + task head written to {result.out_dir}"
    )
    return result


if __name__ == "__main__":
    main()
