"""Prompts and images in the ShareGPT4V JSON format, and a small generated stand-in dataset.

A ShareGPT4V file is a JSON list of
`{"id", "image": path relative to a data root, "conversations": [{"from": "human", "value":
"<image>\\n<question>"}, {"from": "gpt", "value": "<caption>"}, ...]}`.

    cd benchmarks && python -m replay.datasets --out data/sharegpt4v_mini

regenerates the shipped mini dataset (synthetic shapes and captions with ShareGPT4V-like lengths).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
DATASET_FILE = "sharegpt4v_mini.json"


@dataclass(frozen=True)
class Sample:
    prompt: str  # the first human turn, `<image>` placeholder stripped
    image_paths: tuple[str, ...]  # resolved against the image root; () for text-only entries
    output_words: int  # words in the first gpt turn (VaLoRA's output length)


def load_sharegpt4v(
    path: str | Path, image_root: str | Path | None = None, limit: int | None = None
) -> list[Sample]:
    """Samples of a ShareGPT4V JSON file, in file order, at most `limit` of them.

    Image paths are relative to `image_root` (default: the JSON's folder). Entries whose image
    file is missing are skipped and counted in a warning (as vLLM's benchmark does for the
    non-COCO images); ValueError if no entry remains. Entries without "image" get no image."""
    path = Path(path)
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of ShareGPT4V entries")
    root = Path(image_root) if image_root is not None else path.parent
    samples, num_missing = [], 0
    for entry in entries:
        if limit is not None and len(samples) >= limit:
            break
        image_paths = tuple(str(root / name) for name in _image_names(entry))
        if not all(Path(p).is_file() for p in image_paths):
            num_missing += 1
            continue
        samples.append(_sample(entry, image_paths, path))
    if num_missing:
        log.warning(
            "%s: skipped %d entries whose image is missing under %s", path, num_missing, root
        )
    if not samples:
        raise ValueError(
            f"{path}: no usable entry ({num_missing} with images missing under {root})"
        )
    return samples


def _image_names(entry: dict) -> list[str]:
    image = entry.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def _sample(entry: dict, image_paths: tuple[str, ...], path: Path) -> Sample:
    turns = entry.get("conversations") or []
    human = next((t["value"] for t in turns if t.get("from") == "human"), None)
    gpt = next((t["value"] for t in turns if t.get("from") == "gpt"), "")
    if human is None:
        raise ValueError(f"{path}: entry {entry.get('id')!r} has no human turn")
    prompt = human.replace(IMAGE_PLACEHOLDER, "").strip()
    return Sample(prompt=prompt, image_paths=image_paths, output_words=len(gpt.split()))


# ---- the generated mini dataset ------------------------------------------------------------

IMAGE_SIZES = ((224, 224), (336, 224), (224, 336), (448, 448), (168, 168), (392, 280))  # (w, h)
COLOR_NAMES = "red orange gold green teal royalblue purple hotpink sienna gray white black".split()
COLORS = {name: ImageColor.getrgb(name) for name in COLOR_NAMES}  # name -> (r, g, b)
SHAPES = ("circle", "square", "triangle", "rectangle")
QUESTIONS = (
    "Describe the image in detail.",
    "What do you see happening in this image?",
    "Can you elaborate on the elements of the picture provided?",
    "Analyze the image in a comprehensive and detailed manner.",
    "Write a detailed description of the given image.",
    "What are the key elements in this picture?",
    "Explain the visual content of the image in great detail.",
    "What is in the photo?",
)
EXTRA_INSTRUCTIONS = (
    "Mention the colors, the shapes and where each object is placed.",
    "Include the background and any patterns or gradients you notice.",
    "Keep the description factual and avoid guessing what lies outside the frame.",
    "Describe the relative sizes of the objects and how they overlap with each other.",
    "Finish with one sentence about the overall mood and composition of the scene.",
)
FILLER_WORDS = {
    "adj": "bright soft sharp smooth bold muted warm cool simple balanced vivid calm".split(),
    "noun": "edge outline surface corner contrast layout area tone pattern region".split(),
    "verb": ["stands out against", "blends into", "draws attention to", "frames", "echoes"],
}
FILLER_SENTENCES = (
    "The {adj} {noun} {verb} the {adj} {noun} nearby.",
    "Overall, the composition feels {adj} and {adj}, with a clear {noun} in the middle.",
    "A {adj} {noun} runs along the side of the frame and {verb} the rest of the picture.",
    "There is no text, person or animal in the picture, only geometric forms.",
    "Each {noun} looks {adj}, which gives the whole image a {adj} character.",
    "The lighting is even, so every {noun} appears {adj} and easy to distinguish.",
)


def generate_dataset(
    out_dir: str | Path, num_samples: int = 48, num_images: int = 12, seed: int = 0
) -> Path:
    """Write `num_images` PNGs under `out_dir/images/` and `out_dir/sharegpt4v_mini.json` with
    `num_samples` entries (sample i shows image i % num_images); returns the JSON's path.
    Deterministic per seed: prompts of 4-40-odd words, captions of 60-250 words."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes = []
    for k in range(num_images):
        image, scene = _draw_scene(rng)
        image.save(out_dir / "images" / f"img_{k:02d}.png", optimize=True)
        scenes.append(scene)
    entries = [_entry(i, i % num_images, scenes[i % num_images], rng) for i in range(num_samples)]
    json_path = out_dir / DATASET_FILE
    json_path.write_text(json.dumps(entries, indent=1) + "\n")
    return json_path


def _draw_scene(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A two-color gradient with 2-4 flat shapes, and the caption sentences that describe it."""
    width, height = rng.choice(IMAGE_SIZES)
    top, bottom = rng.sample(sorted(COLORS), 2)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]  # [h, 1, 1]
    pixels = (1 - ramp) * np.array(COLORS[top]) + ramp * np.array(COLORS[bottom])  # [h, 1, 3]
    pixels = np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    draw = ImageDraw.Draw(image)
    scene = [
        f"The image shows a {width} by {height} picture with a background that fades from "
        f"{top} at the top to {bottom} at the bottom."
    ]
    for _ in range(rng.randint(2, 4)):
        scene.append(_draw_shape(draw, width, height, {top, bottom}, rng))
    return image, scene


def _draw_shape(
    draw: ImageDraw.ImageDraw, width: int, height: int, background: set[str], rng: random.Random
) -> str:
    shape = rng.choice(SHAPES)
    color = rng.choice(sorted(set(COLORS) - background))
    size = rng.randint(min(width, height) // 6, min(width, height) // 3)
    x, y = rng.randint(0, width - size), rng.randint(0, height - size)
    box = (x, y, x + size, y + (size // 2 if shape == "rectangle" else size))
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "triangle":
        draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=COLORS[color])
    else:
        draw.rectangle(box, fill=COLORS[color])
    vertical = "upper" if (box[1] + box[3]) / 2 < height / 2 else "lower"
    horizontal = "left" if (box[0] + box[2]) / 2 < width / 2 else "right"
    return f"A {color} {shape} sits in the {vertical} {horizontal} part of the image."


def _entry(index: int, image_index: int, scene: list[str], rng: random.Random) -> dict:
    question = rng.choice(QUESTIONS)
    extras = rng.sample(EXTRA_INSTRUCTIONS, rng.randint(0, 2))
    human = f"{IMAGE_PLACEHOLDER}\n" + " ".join([question, *extras])
    return {
        "id": f"mini_{index:04d}",
        "image": f"images/img_{image_index:02d}.png",
        "conversations": [
            {"from": "human", "value": human},
            {"from": "gpt", "value": _caption(scene, rng)},
        ],
    }


def _caption(scene: list[str], rng: random.Random) -> str:
    """The scene's sentences, then filler sentences until 60-230 words are reached (<= 250)."""
    target = rng.randint(60, 230)
    sentences = list(scene)
    while sum(len(s.split()) for s in sentences) < target:
        template = rng.choice(FILLER_SENTENCES)
        sentences.append(template.format_map(_RandomWords(rng)))
    return " ".join(sentences)


class _RandomWords(dict):
    """`str.format_map` source drawing a fresh word of the slot's kind at every use."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, kind: str) -> str:
        return self.rng.choice(FILLER_WORDS[kind])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small ShareGPT4V-format dataset.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--num-images", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = generate_dataset(args.out, args.num_samples, args.num_images, args.seed)
    print(f"wrote {path} ({args.num_samples} entries, {args.num_images} images)")


if __name__ == "__main__":
    main()
