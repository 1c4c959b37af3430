"""The shape tasks: ``colour`` (name one shape's colour), ``count`` (how many identical shapes)
and ``grounding`` (the box of the one red object, in Qwen2-VL's box format)."""

from __future__ import annotations

import numpy as np

from valora.tasks.common import (
    NUMBER_WORDS,
    TaskSpec,
    jitter_colour,
    noisy_background,
    to_uint8,
)
from valora.tasks.draw import PALETTE, SHAPES, mask_box, paint, place_apart, shape_mask

COLOUR_SIZE = (56, 84)  # (height, width)
COUNT_SIZE = (84, 84)
GROUNDING_SIZE = (84, 84)
BACKGROUND = (100.0, 160.0)  # grey level range; far from every palette colour
NOISE = 6.0
COLOUR_ANSWERS = tuple(PALETTE)
COUNTS = tuple(str(n) for n in range(1, 7))
NUM_OBJECTS = ("3", "4", "5")
BOX = "<|box_start|>({},{}),({},{})<|box_end|>"


def _draw(params: dict, rng: np.random.Generator) -> np.ndarray:
    """Shapes ``params["objects"]`` = [(shape, colour name, cx, cy, r)] on a noisy background."""
    height, width = params["size"]
    image = noisy_background(rng, (height, width, 3), BACKGROUND, NOISE)
    for shape, colour, cx, cy, r in params["objects"]:
        mask = shape_mask(shape, height, width, cx, cy, r)
        paint(image, mask, jitter_colour(rng, PALETTE[colour], 15))
    return to_uint8(image)


def _caption(params: dict) -> str:
    """'red circle' (one object), 'four blue squares', or 'three shapes: a red circle, a green
    square and a blue triangle' (objects in drawing order; no positions)."""
    objects = params["objects"]
    kinds = {(shape, colour) for shape, colour, *_ in objects}
    count = NUMBER_WORDS[len(objects)]
    if len(objects) == 1:
        return "{1} {0}".format(*objects[0])
    if len(kinds) == 1:
        shape, colour = kinds.pop()
        return f"{count} {colour} {shape}s"
    parts = [f"a {colour} {shape}" for shape, colour, *_ in objects]
    return f"{count} shapes: {', '.join(parts[:-1])} and {parts[-1]}"


def _sample_colour(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    colour, shape = stratum, SHAPES[rng.integers(len(SHAPES))]
    height, width = COLOUR_SIZE
    r = rng.uniform(9, 15)
    cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
    return stratum, {"size": COLOUR_SIZE, "objects": [(shape, colour, cx, cy, r)]}


def _sample_count(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    num = int(stratum)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(PALETTE)[rng.integers(len(PALETTE))]
    r = rng.uniform(4, 7)
    centres = place_apart(rng, [r] * num, *COUNT_SIZE, gap=3)
    objects = [(shape, colour, cx, cy, r) for cx, cy in centres]
    return stratum, {"size": COUNT_SIZE, "objects": objects}


def box_answer(box: tuple[int, int, int, int], height: int, width: int) -> str:
    """Pixel-edge box (x1, y1, x2, y2) -> ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` with each
    coordinate scaled to 0..1000 (``round(1000 * x / width)``), as Qwen2-VL grounding writes."""
    x1, y1, x2, y2 = box
    scale = [1000 / width, 1000 / height] * 2
    return BOX.format(*(round(v * s) for v, s in zip((x1, y1, x2, y2), scale)))


def _sample_grounding(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    num = int(stratum)
    height, width = GROUNDING_SIZE
    others = [c for c in PALETTE if c != "red"]
    colours = ["red"] + [others[i] for i in rng.integers(len(others), size=num - 1)]
    radii = list(rng.uniform(5, 9, size=num))
    centres = place_apart(rng, radii, height, width, gap=2)
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=num)]
    objects = [(s, c, cx, cy, r) for s, c, (cx, cy), r in zip(shapes, colours, centres, radii)]
    red_mask = shape_mask(objects[0][0], height, width, *centres[0], radii[0])
    answer = box_answer(mask_box(red_mask), height, width)
    return answer, {"size": GROUNDING_SIZE, "objects": objects}


COLOUR = TaskSpec(
    name="colour",
    metric="exact",
    modality="image",
    question="What colour is the object?",
    description="One red/green/blue/yellow circle, square or triangle on a noisy grey background; "
    "answer its colour.",
    strata=COLOUR_ANSWERS,
    sample=_sample_colour,
    render=_draw,
    caption=_caption,
    answers=COLOUR_ANSWERS,
)

COUNT = TaskSpec(
    name="count",
    metric="exact",
    modality="image",
    question="How many shapes are there?",
    description="1 to 6 identical small shapes, apart; answer the count as a digit.",
    strata=COUNTS,
    sample=_sample_count,
    render=_draw,
    caption=_caption,
    answers=COUNTS,
)

GROUNDING = TaskSpec(
    name="grounding",
    metric="exact",
    modality="image",
    question="Where is the red object?",
    description="3 to 5 coloured shapes, exactly one red; answer its bounding box as "
    "<|box_start|>(x1,y1),(x2,y2)<|box_end|>, integers scaled to 0..1000.",
    strata=NUM_OBJECTS,
    sample=_sample_grounding,
    render=_draw,
    caption=_caption,
    manifest_extra={
        "future_metrics": ["iou"],
        "notes": "box IoU scoring is future work; exact match of the box string for now",
    },
)
