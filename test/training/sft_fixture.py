"""The SFT tests' data and settings: a five-example task-suite JSONL (four solid-colour PNGs and
one mp4, one short answer each) and the configuration of the adapter trained on it."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from video_files import colour_frames, encode_mp4

from valora.training.sft import SFTConfig

# image sizes stay small (multiples of 28): 4 image tokens, a few dozen video tokens
MM_KWARGS = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 16}
IMAGES = {"red": "red cat", "blue": "blue dog", "green": "green bird", "yellow": "yellow fish"}
VIDEO_ANSWER = "colours change"
# one optimizer step per epoch over all five examples; settings that memorise the answers
TRAINED = SFTConfig(
    rank=8,
    alpha=8,
    dropout=0.0,
    target_modules="all",
    lr=1e-2,
    lr_scheduler="constant",
    epochs=12,
    batch_size=5,
    device="cpu",
    dtype="float32",
    progress=False,
    mm_processor_kwargs=MM_KWARGS,
)


def user_turn(kind: str, path: str, question: str) -> list[dict]:
    parts = [{"type": kind, kind: path}, {"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


def write_dataset(root: Path) -> Path:
    """``root/train.jsonl`` with media under ``root/media`` (paths relative to the file)."""
    (root / "media").mkdir(parents=True, exist_ok=True)
    records = []
    for colour, answer in IMAGES.items():
        Image.new("RGB", (56, 56), colour).save(root / "media" / f"{colour}.png")
        messages = user_turn("image", f"media/{colour}.png", "What is it?")
        records.append({"id": colour, "task": "t", "messages": messages, "answer": answer})
    (root / "media" / "clip.mp4").write_bytes(encode_mp4(colour_frames(4)))
    messages = user_turn("video", "media/clip.mp4", "What happens?")
    records.append({"id": "clip", "task": "t", "messages": messages, "answer": VIDEO_ANSWER})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps({**r, "metric": "exact"}) + "\n" for r in records))
    return path
