"""The ``ocr_digits`` task: a 3-6 digit number in PIL's default font on a light background."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from valora.tasks.common import TaskSpec, to_uint8

OCR_SIZE = (56, 112)  # (height, width)
LENGTHS = ("3", "4", "5", "6")
FONT_SIZES = (16, 22)  # inclusive range of point sizes


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` (the bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size)
    except (TypeError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _sample(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    length = int(stratum)
    digits = [int(rng.integers(1, 10))] + list(rng.integers(0, 10, size=length - 1))
    answer = "".join(str(d) for d in digits)
    size = int(rng.integers(FONT_SIZES[0], FONT_SIZES[1] + 1))
    ink = int(rng.integers(0, 70))
    return answer, {"text": answer, "font_size": size, "ink": ink, "place": rng.uniform(size=2)}


def _render(params: dict, rng: np.random.Generator) -> np.ndarray:
    """Dark digits at a random spot (that keeps them whole) on near-white, then light noise."""
    height, width = OCR_SIZE
    font = _font(params["font_size"])
    x0, y0, x1, y1 = font.getbbox(params["text"])
    room_x, room_y = width - (x1 - x0) - 4, height - (y1 - y0) - 4
    if room_x < 0 or room_y < 0:
        raise ValueError(f"{params['text']!r} at size {params['font_size']} overflows the image")
    fx, fy = params["place"]
    x, y = 2 + fx * room_x - x0, 2 + fy * room_y - y0
    level = int(rng.integers(215, 256))
    canvas = Image.new("L", (width, height), level)
    ImageDraw.Draw(canvas).text((round(x), round(y)), params["text"], fill=params["ink"], font=font)
    grey = np.asarray(canvas, np.float32)[..., None] + rng.normal(0, 4, (height, width, 1))
    tint = rng.uniform(-8, 8, 3)  # a faint per-channel colour cast
    return to_uint8(np.repeat(grey, 3, axis=2) + tint)


def _caption(params: dict) -> str:
    """'the number 4812'."""
    return f"the number {params['text']}"


OCR_DIGITS = TaskSpec(
    name="ocr_digits",
    metric="edit",
    modality="image",
    question="What number is written?",
    description="A 3-6 digit number (no leading zero) in PIL's default font, dark on a light "
    "background; answer the digits. Val numbers never occur in train.",
    strata=LENGTHS,
    sample=_sample,
    render=_render,
    caption=_caption,
    disjoint_answers=True,
)
