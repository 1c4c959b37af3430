"""Synthetic short video clips for the video-analytics (vat) workload: generation, mp4 I/O and
the manifest of a clip directory.

A clip is a few frames of a scrolling noise texture under coloured shapes that move, each clip
from its own seed, so no two clips share pixels (the prefix cache cannot hide their prefills).
Frames are uint8 [T, H, W, 3] RGB; files are MPEG-4 Part 2 in mp4 (``mpeg4``, yuv420p).

A clip directory holds ``clip_NNNN.mp4`` files and ``manifest.json``:
``{"clips": [{"file", "frames", "fps", "size": [height, width], "seed"}, ...], ...}``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ClipInfo:
    path: str  # the mp4 file
    frames: int
    fps: float
    height: int
    width: int
    seed: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


def synth_clip(seed: int, num_frames: int = 8, height: int = 336, width: int = 448) -> np.ndarray:
    """One clip, uint8 [num_frames, height, width, 3]: a coarse noise texture scrolling at a
    seeded velocity, under 2-4 discs and boxes of seeded colours moving in straight lines."""
    rng = np.random.default_rng(seed)
    cell = int(rng.integers(8, 33))  # texture grain in pixels
    coarse = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)  # >= frame size
    texture = np.tile(texture, (2, 2, 1))  # room to scroll by up to a texture's size
    vy, vx = rng.integers(-12, 13, size=2)
    shapes = [_random_shape(rng, height, width) for _ in range(int(rng.integers(2, 5)))]
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        dy = (vy * t) % (texture.shape[0] // 2)
        dx = (vx * t) % (texture.shape[1] // 2)
        frame = texture[dy : dy + height, dx : dx + width].copy()
        for shape in shapes:
            frame[_shape_mask(shape, t, yy, xx)] = shape["color"]
        out[t] = frame
    return out


def _random_shape(rng: np.random.Generator, height: int, width: int) -> dict:
    return {
        "disc": bool(rng.integers(0, 2)),
        "y": float(rng.uniform(0, height)),
        "x": float(rng.uniform(0, width)),
        "vy": float(rng.uniform(-0.08, 0.08) * height),
        "vx": float(rng.uniform(-0.08, 0.08) * width),
        "r": float(rng.uniform(0.06, 0.2) * min(height, width)),
        "color": rng.integers(0, 256, size=3, dtype=np.uint8),
    }


def _shape_mask(shape: dict, t: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    cy, cx, r = shape["y"] + shape["vy"] * t, shape["x"] + shape["vx"] * t, shape["r"]
    if shape["disc"]:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * 0.7)


def make_clip_arrays(
    num_clips: int,
    num_frames: int | Sequence[int] = 8,
    size: tuple[int, int] = (336, 448),
    seed: int = 0,
) -> list[np.ndarray]:
    """``num_clips`` distinct clips in memory (clip i from seed ``seed + i``; frame counts cycle
    through ``num_frames``), each uint8 [T, H, W, 3] with (H, W) = ``size``."""
    counts = [num_frames] if isinstance(num_frames, int) else list(num_frames)
    return [synth_clip(seed + i, counts[i % len(counts)], *size) for i in range(num_clips)]


def encode_mp4(frames: np.ndarray, fps: float, target=None) -> bytes | None:
    """Frames -> an mp4 (``mpeg4``, yuv420p, even sizes only): written to ``target`` (a path),
    or returned as bytes when ``target`` is None."""
    import av

    buffer = io.BytesIO() if target is None else None
    with av.open(buffer if target is None else str(target), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000  # clean enough that the frames stay distinct
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return None if buffer is None else buffer.getvalue()


def read_clip(path: str | Path) -> np.ndarray:
    """Every frame of a video file, uint8 [T, H, W, 3] RGB."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def write_clips(
    directory: str | Path,
    num_clips: int,
    num_frames: int | Sequence[int] = 8,
    fps: float = 4.0,
    size: tuple[int, int] = (336, 448),
    seed: int = 0,
) -> list[ClipInfo]:
    """``make_clip_arrays`` written as mp4 files plus ``manifest.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, frames in enumerate(make_clip_arrays(num_clips, num_frames, size, seed)):
        name = f"clip_{i:04d}.mp4"
        encode_mp4(frames, fps, directory / name)
        entries.append(
            {"file": name, "frames": len(frames), "fps": fps, "size": list(size), "seed": seed + i}
        )
    manifest = {"generator": "benchmarks/make_clips.py", "clips": entries}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return load_manifest(directory)


def load_manifest(directory: str | Path) -> list[ClipInfo]:
    """The clips a directory's manifest lists, paths resolved against the directory.
    FileNotFoundError without a manifest or with a listed file missing."""
    directory = Path(directory)
    entries = json.loads((directory / MANIFEST).read_text())["clips"]
    clips = []
    for e in entries:
        path = directory / e["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in the manifest, not on disk")
        height, width = e["size"]
        clips.append(ClipInfo(str(path), e["frames"], float(e["fps"]), height, width, e["seed"]))
    return clips


def parse_size(text: str) -> tuple[int, int]:
    """``"336x448"`` -> (height 336, width 448); both must be even (yuv420p)."""
    height, _, width = text.lower().partition("x")
    size = (int(height), int(width))
    if min(size) < 2 or size[0] % 2 or size[1] % 2:
        raise ValueError(f"clip size {text!r}: want HEIGHTxWIDTH, both even and >= 2")
    return size
