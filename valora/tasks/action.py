"""The video tasks on one scene, a square moving left, right, up or down over a noisy background:
``action`` (which way it moves) and ``clip_colour`` (its colour); and the mp4 writer (PyAV,
mpeg4, yuv420p) the generator saves clips with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from valora.tasks.common import TaskSpec, jitter_colour, noisy_background, to_uint8
from valora.tasks.draw import PALETTE

ACTION_SIZE = (56, 84)  # (height, width); both even, as yuv420p needs
NUM_FRAMES = 8
FRAME_RATE = 4
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _scene(rng: np.random.Generator, direction: str, colour: str | None = None) -> dict:
    """Side, speed and a start that keep the square wholly inside every frame; a random colour
    unless given."""
    height, width = ACTION_SIZE
    side = int(rng.integers(8, 13))
    speed = rng.uniform(2.0, 4.0)  # pixels per frame
    travel = speed * (NUM_FRAMES - 1)
    dx, dy = DIRECTIONS[direction]
    lo_x, hi_x = max(0, -dx * travel), width - side - max(0, dx * travel)
    lo_y, hi_y = max(0, -dy * travel), height - side - max(0, dy * travel)
    start = (rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y))
    if colour is None:
        colour = list(PALETTE)[rng.integers(len(PALETTE))]
    return {"side": side, "speed": speed, "start": start, "step": (dx, dy), "colour": colour}


def _sample(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    return stratum, _scene(rng, stratum)


def _sample_clip_colour(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    return stratum, _scene(rng, direction, colour=stratum)


def _render(params: dict, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, H, W, 3]: fresh background noise each frame, the square at its position."""
    height, width = ACTION_SIZE
    frames = noisy_background(rng, (NUM_FRAMES, height, width, 3), (70.0, 130.0), 8.0)
    colour = jitter_colour(rng, PALETTE[params["colour"]], 15)
    side, (x0, y0), (dx, dy) = params["side"], params["start"], params["step"]
    for t in range(NUM_FRAMES):
        x = round(x0 + dx * params["speed"] * t)
        y = round(y0 + dy * params["speed"] * t)
        frames[t, y : y + side, x : x + side] = colour
    return to_uint8(frames)


def _caption(params: dict) -> str:
    """'a red square moving left'."""
    direction = next(name for name, step in DIRECTIONS.items() if step == tuple(params["step"]))
    return f"a {params['colour']} square moving {direction}"


def write_mp4(frames: np.ndarray, path: str | Path, rate: int = FRAME_RATE) -> None:
    """uint8 frames [T, H, W, 3] (H and W even) -> an mp4 file (mpeg4 codec, yuv420p)."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 1_000_000  # ample for tiny frames; keeps the square's edges crisp
        stream.thread_count = 1  # a single encoder thread keeps the bytes reproducible
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


ACTION = TaskSpec(
    name="action",
    metric="exact",
    modality="video",
    question="Which way does the square move?",
    description=f"{NUM_FRAMES}-frame {ACTION_SIZE[0]}x{ACTION_SIZE[1]} mp4 clip ({FRAME_RATE} fps) "
    "of a coloured square moving in a straight line; answer left, right, up or down.",
    strata=tuple(DIRECTIONS),
    sample=_sample,
    render=_render,
    caption=_caption,
    answers=tuple(DIRECTIONS),
)

CLIP_COLOUR = TaskSpec(
    name="clip_colour",
    metric="exact",
    modality="video",
    question="What colour is the moving square?",
    description=f"The action task's clips ({NUM_FRAMES} frames, {FRAME_RATE} fps), the square "
    "moving any way; answer its colour (red, green, blue or yellow).",
    strata=tuple(PALETTE),
    sample=_sample_clip_colour,
    render=_render,
    caption=_caption,
    answers=tuple(PALETTE),
)
