"""A small task suite on disk in the shared dataset format: tiny PNGs and one mp4 under
``media/``, ``val.jsonl`` naming them relative to itself; three tasks, one per metric."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from video_files import colour_frames, encode_mp4

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 210)}


def user(media: dict, text: str) -> list[dict]:
    return [{"role": "user", "content": [media, {"type": "text", "text": text}]}]


def suite_examples() -> list[dict]:
    rows = []
    for i, name in enumerate(("red", "blue")):
        image = {"type": "image", "image": f"media/{name}.png"}
        rows.append(("colour", i, user(image, "Which colour is this?"), name, "exact"))
    caption = user({"type": "image", "image": "media/green.png"}, "Describe the picture.")
    rows.append(("caption", 0, caption, "a green square on white", "bleu"))
    clip = user({"type": "video", "video": "media/clip.mp4"}, "What happens in the video?")
    rows.append(("caption", 1, clip, "colours change", "bleu"))
    rows.append(("ocr", 0, user(image, "Read the text."), "VaLoRA", "edit"))
    return [
        {"id": f"{task}-{i}", "task": task, "messages": m, "answer": a, "metric": metric}
        for task, i, m, a, metric in rows
    ]


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    """The suite's directory (``val.jsonl`` + ``media/``)."""
    root = tmp_path_factory.mktemp("suite")
    (root / "media").mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "media" / f"{name}.png")
    (root / "media" / "clip.mp4").write_bytes(encode_mp4(colour_frames(4)))
    lines = [json.dumps(e) for e in suite_examples()]
    (root / "val.jsonl").write_text("\n".join(lines) + "\n")
    return root
