"""A labelled synthetic image/video set in the ``train_task_head`` data format.

Video classes are directions of motion: a bright square crossing a noisy background, class ``k``
moving at angle ``360 * k / classes`` degrees (4 classes: right, down, left, up). Image classes
are colours (red, green, blue, yellow, ...) of a square on a noisy grey background, and past the
palette also the half (left/right) it sits in. Each example draws its own start position, square
size, speed, brightness and noise, so no two examples are alike.

    python -m valora.training.synthetic_clips --out data --num 64 --kind video --classes 4 \
        --frames 8 --size 56x84 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (40, 70, 235),
    "yellow": (235, 225, 40),
    "magenta": (220, 40, 220),
    "cyan": (40, 220, 225),
    "white": (245, 245, 245),
    "orange": (245, 140, 20),
}
_COMPASS = {0: "right", 45: "down_right", 90: "down", 135: "down_left", 180: "left"}
_COMPASS |= {225: "up_left", 270: "up", 315: "up_right"}
MAX_CLASSES = 2 * len(PALETTE)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
QUESTIONS = {
    "video": "Which way does the square move?",
    "image": "What colour is the square?",
}


def class_labels(kind: str, classes: int) -> list[str]:
    """The label names of ``classes`` classes of ``kind`` ("video" | "image")."""
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must lie in [2, {MAX_CLASSES}], got {classes}")
    if kind == "video":
        degrees = [360 * k / classes for k in range(classes)]
        return [f"moving_{_COMPASS[d]}" if d in _COMPASS else f"moving_{d:g}deg" for d in degrees]
    if kind == "image":
        colours = list(PALETTE)
        if classes <= len(colours):
            return colours[:classes]
        return [f"{colours[k % len(colours)]}_{('left', 'right')[k // 8]}" for k in range(classes)]
    raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")


def _background(rng: np.random.Generator, frames: int, h: int, w: int) -> np.ndarray:
    """[T, H, W, 3] float32 noisy grey, a fresh noise field per frame."""
    level = rng.uniform(60, 110)
    return level + rng.normal(0, 18, (frames, h, w, 3)).astype(np.float32)


def make_clip(
    label_index: int, rng: np.random.Generator, frames: int, h: int, w: int, classes: int = 4
) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright square moving at ``360 * label_index / classes`` degrees
    (image y axis down; 4 classes: right, down, left, up) from a random start chosen so it stays
    inside the frame."""
    angle = 2 * math.pi * label_index / classes
    side = int(rng.integers(max(4, min(h, w) // 6), max(5, min(h, w) // 3) + 1))
    travel = rng.uniform(0.45, 0.7) * (min(h, w) - side)
    dx, dy = math.cos(angle) * travel, math.sin(angle) * travel
    x0 = rng.uniform(max(0.0, -dx), w - side - max(0.0, dx))
    y0 = rng.uniform(max(0.0, -dy), h - side - max(0.0, dy))
    video = _background(rng, frames, h, w)
    colour = rng.uniform(210, 255, 3)
    for t in range(frames):
        step = t / max(frames - 1, 1)
        x, y = int(round(x0 + step * dx)), int(round(y0 + step * dy))
        video[t, y : y + side, x : x + side] = colour
    return np.clip(video, 0, 255).astype(np.uint8)


def make_image(
    label_index: int, rng: np.random.Generator, h: int, w: int, classes: int = 4
) -> np.ndarray:
    """(H, W, 3) uint8: a square of the class's colour (and half, past the palette) on noise."""
    colours = list(PALETTE.values())
    colour = np.array(colours[label_index % len(colours)], np.float32)
    half = label_index // len(colours) if classes > len(colours) else None
    side = int(rng.integers(min(h, w) // 3, min(h, w) // 2 + 1))
    x_lo, x_hi = (0, w - side) if half is None else (half * w // 2, half * w // 2 + w // 2 - side)
    x = int(rng.integers(x_lo, max(x_lo, x_hi) + 1))
    y = int(rng.integers(0, h - side + 1))
    image = _background(rng, 1, h, w)[0]
    image[y : y + side, x : x + side] = colour * rng.uniform(0.85, 1.0) + rng.normal(0, 8, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 2) -> Path:
    """(T, H, W, 3) uint8 RGB -> an mp4 (MPEG-4 Part 2, yuv420p; H and W must be even)."""
    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even sides, got {w}x{h}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless, small files at these sizes
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return Path(path)


def chat_prompt(kind: str) -> str:
    """The Qwen2-VL chat-template rendering of one image/video part plus the class question."""
    pad = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
    user = f"<|vision_start|>{pad}<|vision_end|>{QUESTIONS[kind]}"
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def write_dataset(
    out: str | Path,
    num: int,
    kind: str = "video",
    classes: int = 4,
    frames: int = 8,
    size: tuple[int, int] = (56, 84),
    seed: int = 0,
    fps: int = 2,
) -> Path:
    """Write ``labels.json``, ``examples.jsonl`` and the media (``{i:05d}.png|.mp4``) into
    ``out``; classes cycle so each has ``num / classes`` examples (+-1). ``size`` is (H, W)."""
    from PIL import Image

    labels = class_labels(kind, classes)
    h, w = size
    rng = np.random.default_rng(seed)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps(labels) + "\n")
    lines = []
    for i in range(num):
        label = i % classes
        example = {"prompt": chat_prompt(kind), "image": None, "video": None}
        if kind == "image":
            example["image"] = f"{i:05d}.png"
            Image.fromarray(make_image(label, rng, h, w, classes)).save(root / example["image"])
        else:
            example["video"] = f"{i:05d}.mp4"
            clip = make_clip(label, rng, frames, h, w, classes)
            write_mp4(clip, root / example["video"], fps)
        example["label"] = labels[label]
        lines.append(json.dumps(example))
    (root / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _size(text: str) -> tuple[int, int]:
    """ "HxW" -> (H, W)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory to write the data set into")
    p.add_argument("--num", type=int, default=64, help="number of examples")
    p.add_argument("--kind", choices=("video", "image"), default="video")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--frames", type=int, default=8, help="frames per clip (video)")
    p.add_argument("--size", type=_size, default=(56, 84), help="HxW in pixels, e.g. 56x84")
    p.add_argument("--fps", type=int, default=2, help="frame rate written into the mp4s")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = write_dataset(
        args.out, args.num, args.kind, args.classes, args.frames, args.size, args.seed, args.fps
    )
    print(f"wrote {args.num} {args.kind} examples of {args.classes} classes to {out}")
    return out


if __name__ == "__main__":
    main()
