"""A labelled image/video set for task-head training: ``labels.json`` + ``examples.jsonl`` ->
examples, HF model inputs per example, right-padded batches, and a stratified held-out split.

``examples.jsonl`` holds one JSON object a line: ``{"prompt": ..., "image": "file.png" | null,
"video": "file.mp4" | null, "label": "name"}``; the prompt holds one ``<|image_pad|>`` per image
and one ``<|video_pad|>`` per video, media paths are relative to the data directory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from valora.multimodal import expand_image_placeholders, process_image
from valora.tokenizer import Tokenizer
from valora.video import process_video

MODALITY_TYPE = {"image": 1, "video": 2}  # mm_token_type_ids values; text is 0


@dataclass(frozen=True)
class Example:
    prompt: str
    image: Path | None
    video: Path | None
    label_index: int


def load_dataset(data_dir: str | Path) -> tuple[list[str], list[Example]]:
    """-> (labels, examples); a ``ValueError`` names the first problem (file and line)."""
    root = Path(data_dir)
    labels = json.loads((root / "labels.json").read_text())
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"{root / 'labels.json'} must be a list of non-empty strings")
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise ValueError(f"{root / 'labels.json'} must hold at least 2 unique labels")
    index = {label: i for i, label in enumerate(labels)}
    examples = []
    lines = (root / "examples.jsonl").read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip():
            examples.append(_parse_example(json.loads(line), root, index, number))
    if not examples:
        raise ValueError(f"{root / 'examples.jsonl'} holds no examples")
    return labels, examples


def _parse_example(data: dict, root: Path, index: dict[str, int], number: int) -> Example:
    where = f"examples.jsonl line {number}"
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise ValueError(f"{where}: needs a string 'prompt'")
    if data.get("label") not in index:
        raise ValueError(f"{where}: label {data.get('label')!r} is not in labels.json")
    media = {}
    for kind in ("image", "video"):
        name = data.get(kind)
        if name is not None and not (root / name).is_file():
            raise ValueError(f"{where}: {kind} file {root / name} not found")
        media[kind] = None if name is None else root / name
    return Example(data["prompt"], media["image"], media["video"], index[data["label"]])


def encode_example(example: Example, tokenizer: Tokenizer, config) -> dict:
    """-> {"input_ids" [L] int64, "mm_token_type_ids" [L] int32, "vision": [(modality,
    ProcessedVision)] in prompt order, "label": int}. ``config`` is the HF model config."""
    ids = tokenizer.encode(example.prompt)
    pads = {"image": config.image_token_id, "video": config.video_token_id}
    items = []
    for modality, path in (("image", example.image), ("video", example.video)):
        count = sum(1 for t in ids if t == pads[modality])
        if count != (path is not None):
            raise ValueError(
                f"the prompt has {count} <|{modality}_pad|> placeholders but "
                f"{int(path is not None)} {modality}s: {example.prompt[:80]!r}"
            )
        if path is not None:
            vision = process_image(path) if modality == "image" else process_video(str(path))
            ids = expand_image_placeholders(ids, [vision], pads[modality])
            items.append((ids.index(pads[modality]), modality, vision))
    input_ids = torch.tensor(ids, dtype=torch.long)
    types = torch.zeros(len(ids), dtype=torch.int32)
    for modality, pad in pads.items():
        types[input_ids == pad] = MODALITY_TYPE[modality]
    vision = [(modality, v) for _, modality, v in sorted(items, key=lambda item: item[0])]
    return {
        "input_ids": input_ids,
        "mm_token_type_ids": types,
        "vision": vision,
        "label": example.label_index,
    }


def collate(batch: list[dict], device: torch.device) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Right-padded HF inputs -> (model kwargs, last prompt token index [B], labels [B])."""
    lengths = torch.tensor([len(b["input_ids"]) for b in batch])
    input_ids = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    mask = torch.zeros_like(input_ids)
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        input_ids[row, :n] = b["input_ids"]
        types[row, :n] = b["mm_token_type_ids"]
        mask[row, :n] = 1
    kwargs = {"input_ids": input_ids, "attention_mask": mask}
    vision = [item for b in batch for item in b["vision"]]
    for modality, pixels_key, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        chosen = [v for m, v in vision if m == modality]
        if chosen:
            kwargs[pixels_key] = torch.cat([v.pixel_values for v in chosen])
            kwargs[grid_key] = torch.tensor([v.grid_thw for v in chosen])
    if vision:
        kwargs["mm_token_type_ids"] = types
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    labels = torch.tensor([b["label"] for b in batch], device=device)
    return kwargs, (lengths - 1).to(device), labels


def split_held_out(
    examples: list, labels_of: list[int], fraction: float, seed: int
) -> tuple[list, list]:
    """Stratified split: ``round(fraction * n_label)`` of each label's examples held out."""
    rng = random.Random(seed)
    train, held = [], []
    for label in sorted(set(labels_of)):
        group = [e for e, y in zip(examples, labels_of) if y == label]
        rng.shuffle(group)
        cut = round(fraction * len(group))
        held += group[:cut]
        train += group[cut:]
    rng.shuffle(train)
    return train, held
