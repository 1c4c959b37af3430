"""SFT data: the shared task-suite JSONL -> records -> HF model inputs with answer-only labels.

One JSON object a line: ``{"id", "task", "messages": [{"role": "user", "content": [{"type":
"image", "image": "media/x.png"} | {"type": "video", "video": "media/x.mp4"} | {"type": "text",
"text": ...}]}], "answer": str, "metric": ...}``; media paths are relative to the JSONL file's
directory (``load_sft_jsonl`` reads the file with ``valora.tasks.dataset.load_jsonl`` and makes
them absolute).

Encoding one record: the prompt is the chat template over ``messages`` with the assistant header
(``Tokenizer.apply_chat_template``), its image / video placeholders expanded
(``expand_vision_placeholders``); the target is the answer's tokens then ``<|im_end|>``. Labels
are -100 on every prompt token, so the loss covers the answer and its end token only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from valora.multimodal import ImageProcessorConfig, expand_vision_placeholders, process_image
from valora.tasks.dataset import load_jsonl, validate_example
from valora.tokenizer import Tokenizer
from valora.training.task_data import MODALITY_TYPE, collate
from valora.video import VideoProcessorConfig, process_video

IGNORE_INDEX = -100  # labels of tokens outside the loss (cross_entropy's ignore_index)


def load_sft_jsonl(path: str | Path) -> list[dict]:
    """Records of a task-suite JSONL file (validated by ``valora.tasks.dataset.load_jsonl``:
    ``ValueError`` names the file and line of the first problem), media paths made absolute."""
    path = Path(path)
    return [absolute_media(record, path.parent) for record in load_jsonl(path)]


def check_records(records: Sequence[dict], root: str | Path) -> list[dict]:
    """Records given in memory, validated as the JSONL lines are, media paths (relative to
    ``root``) made absolute."""
    checked = []
    for number, record in enumerate(records):
        validate_example(record, root, f"example {number}")
        checked.append(absolute_media(record, Path(root)))
    if not checked:
        raise ValueError("no training examples")
    return checked


def absolute_media(record: dict, root: Path) -> dict:
    """The record with every image / video path joined to ``root`` (absolute ones kept)."""
    messages = []
    for message in record["messages"]:
        content = message["content"]
        if isinstance(content, list):
            content = [_absolute_part(part, root) for part in content]
        messages.append({**message, "content": content})
    return {**record, "messages": messages}


def _absolute_part(part: dict, root: Path) -> dict:
    kind = part.get("type")
    return {**part, kind: str(root / part[kind])} if kind in ("image", "video") else part


def media_of(messages: Sequence[dict]) -> tuple[list, list]:
    """(image sources, video sources) of the messages' content parts, each in prompt order."""
    found: dict[str, list] = {"image": [], "video": []}
    for message in messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") in found:
                    found[part["type"]].append(part[part["type"]])
    return found["image"], found["video"]


def engine_prompt(record: dict, tokenizer: Tokenizer, mm_processor_kwargs=None) -> dict:
    """The record's prompt as a valora / vLLM prompt dict (what the adapter answers in serving)."""
    images, videos = media_of(record["messages"])
    prompt = {
        "prompt": tokenizer.apply_chat_template(record["messages"]),
        "multi_modal_data": {"image": images, "video": videos},
    }
    if mm_processor_kwargs:
        prompt["mm_processor_kwargs"] = dict(mm_processor_kwargs)
    return prompt


def encode_record(
    record: dict,
    tokenizer: Tokenizer,
    model_config,
    image_cfg: ImageProcessorConfig,
    video_cfg: VideoProcessorConfig,
) -> dict:
    """-> {"input_ids" [L] int64, "labels" [L] int64 (-100 but on the target),
    "mm_token_type_ids" [L] int32, "vision": [(modality, ProcessedVision)] in prompt order}.
    ``model_config`` is the HF model config (its image / video token ids)."""
    image_pad, video_pad = model_config.image_token_id, model_config.video_token_id
    image_sources, video_sources = media_of(record["messages"])
    images = [process_image(source, image_cfg) for source in image_sources]
    videos = [process_video(source, video_cfg) for source in video_sources]
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(record["messages"]))
    prompt_ids, ordered = expand_vision_placeholders(
        prompt_ids, images, videos, image_pad, video_pad
    )
    target = tokenizer.encode(record["answer"], allow_special=False)
    target.append(tokenizer.token_id("<|im_end|>"))
    input_ids = torch.tensor(prompt_ids + target, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[len(prompt_ids) :] = torch.tensor(target)
    types = torch.zeros(len(input_ids), dtype=torch.int32)
    types[input_ids == image_pad] = MODALITY_TYPE["image"]
    types[input_ids == video_pad] = MODALITY_TYPE["video"]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "mm_token_type_ids": types,
        "vision": [(item.modality, item) for item in ordered],
    }


def collate_sft(batch: list[dict]) -> tuple[dict, torch.Tensor]:
    """Right-padded CPU batch -> (HF model kwargs, labels [B, L] with -100 on padding).

    The kwargs come from the task-head trainer's ``collate`` (input_ids, attention_mask,
    mm_token_type_ids, pixel_values / image_grid_thw, pixel_values_videos / video_grid_thw);
    its per-example class label is not used here, so a placeholder fills it."""
    kwargs, _, _ = collate([{**b, "label": 0} for b in batch], torch.device("cpu"))
    labels = torch.full_like(kwargs["input_ids"], IGNORE_INDEX)
    for row, b in enumerate(batch):
        labels[row, : len(b["labels"])] = b["labels"]
    return kwargs, labels


class EncodeBatch:
    """A DataLoader ``collate_fn``: records -> ``collate_sft`` of their encodings. Picklable for
    spawned workers: it carries the checkpoint directory and loads the tokenizer (whose
    template environment does not pickle) once per process."""

    def __init__(self, model_dir, model_config, image_cfg, video_cfg) -> None:
        self.model_dir = str(model_dir)
        self.args = (model_config, image_cfg, video_cfg)
        self._tokenizer: Tokenizer | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.load(self.model_dir)
        return self._tokenizer

    def __call__(self, records: list[dict]) -> tuple[dict, torch.Tensor]:
        return collate_sft([encode_record(r, self.tokenizer, *self.args) for r in records])
