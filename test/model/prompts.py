"""Prompts shared by the model tests: text only, one image, two images of different sizes."""

from __future__ import annotations

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_part() -> dict:
    return {"type": "image"}


CONVERSATIONS = {
    "text": ([{"role": "user", "content": "Tell me about Qwen2-VL, 请用中文回答。"}], []),
    "one_image": (
        [{"role": "user", "content": [image_part(), {"type": "text", "text": "Describe it."}]}],
        [(84, 56, 1)],
    ),
    "two_images": (
        [
            {"role": "system", "content": "You compare pictures."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First:"},
                    image_part(),
                    {"type": "text", "text": "Second:"},
                    image_part(),
                    {"type": "text", "text": "Which is wider?"},
                ],
            },
        ],
        [(140, 60, 2), (50, 110, 3)],
    ),
}


def conversation_images(name: str) -> list[Image.Image]:
    return [noise_image(w, h, seed) for w, h, seed in CONVERSATIONS[name][1]]
