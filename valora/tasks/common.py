"""Shared pieces of the procedural task suite: the ``TaskSpec`` a task module fills in, seeding,
and small pixel helpers (noisy backgrounds, painting a mask).

A task is three functions. ``sample(rng, stratum) -> (answer, params)`` draws one example's answer
and everything needed to draw it (cheap, so the generator can reject answers it must avoid);
``render(params, rng) -> uint8 array`` draws it: ``[H, W, 3]`` for an image task, ``[T, H, W, 3]``
for a video task. ``caption(params) -> str`` describes the scene in words for the ``pretrain``
split (what a captioning corpus would say, never the task's answer format). ``strata`` are the
values the generator balances over (the answers themselves for a small answer space, else a
coarse property such as the string length).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

METRICS = ("exact", "bleu", "edit")
MODALITIES = ("image", "video")
SPLIT_CODES = {"train": 0, "val": 1, "pretrain": 2}
DESCRIBE = {"image": "Describe the image.", "video": "Describe the video."}

Sampler = Callable[[np.random.Generator, str], tuple[str, dict]]
Renderer = Callable[[dict, np.random.Generator], np.ndarray]
Captioner = Callable[[dict], str]
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class TaskSpec:
    """One procedural task. Invariant: ``sample`` and ``render`` draw every random number from the
    generator they are given, so an example is a pure function of (seed, task, split, index).

    ``disjoint_answers``: val answers never occur among train answers (for open answer spaces,
    where the same answer would mean a near-identical image).
    """

    name: str
    metric: str
    modality: str
    question: str
    description: str
    strata: tuple[str, ...]
    sample: Sampler
    render: Renderer
    caption: Captioner
    answers: tuple[str, ...] | None = None  # the closed answer set, when there is one
    disjoint_answers: bool = False
    manifest_extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name}: metric must be one of {METRICS}")
        if self.modality not in MODALITIES:
            raise ValueError(f"task {self.name}: modality must be one of {MODALITIES}")
        if not self.strata:
            raise ValueError(f"task {self.name}: needs at least one stratum")

    @property
    def suffix(self) -> str:
        """The media file extension."""
        return ".png" if self.modality == "image" else ".mp4"


def example_rng(seed: int, task: str, split: str, index: int | None = None) -> np.random.Generator:
    """A generator keyed by (seed, task, split, index); ``index=None`` keys the split's own stream
    (its stratum order). Stable across runs and platforms. The key has a fixed length because
    ``SeedSequence`` treats trailing zeros as absent ([s, 0] seeds like [s])."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    kind, position = (0, 0) if index is None else (1, index)
    key = [seed, zlib.crc32(task.encode()), SPLIT_CODES[split], kind, position]
    return np.random.default_rng(np.random.SeedSequence(key))


def balanced_strata(strata: tuple[str, ...], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` strata, each used ``count // len(strata)`` or one more times, in shuffled order."""
    cycle = [strata[i % len(strata)] for i in range(count)]
    return [cycle[i] for i in rng.permutation(count)]


def noisy_background(
    rng: np.random.Generator, shape: tuple[int, ...], level: tuple[float, float], sigma: float
) -> np.ndarray:
    """float32 array of ``shape`` (..., 3): a uniform grey drawn from ``level`` plus noise."""
    base = rng.uniform(*level)
    return (base + rng.normal(0.0, sigma, shape)).astype(np.float32)


def jitter_colour(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> np.ndarray:
    """``rgb`` with each channel moved by up to ``amount``, as float32 [3]."""
    return np.clip(np.array(rgb, np.float32) + rng.integers(-amount, amount + 1, 3), 0, 255)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
