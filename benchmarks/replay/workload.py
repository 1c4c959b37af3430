"""The request list of a replay: arrivals x adapter popularity x dataset samples.

Tasks (VaLoRA's two application classes):

- `vqa` (visual retrieval): a dataset sample's prompt and its one image; the output length is
  the sample's caption length in words, capped at `max_output_tokens` (VaLoRA: 120).
- `vat` / `vat_images` (video analytics as VaLoRA emulated it): a short instruction and
  `vat_images` still frames (VaLoRA: 6), one output token standing in for its vision task head.
  `run_exp.py --task vat_images` replays this; `run_exp.py --task vat` is the real thing (video
  clips classified by the adapters' task heads, mixed with vqa: `replay.vat`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from replay.clips import ClipInfo
from replay.datasets import Sample
from replay.traces import interarrival_cv

VAT_INSTRUCTION = "These are frames of one video clip. Which action do they show?"


@dataclass(frozen=True)
class RequestSpec:
    request_id: str
    arrival_s: float  # seconds after the replay's start
    adapter: str | None  # adapter name (`lora{i}` by default); None = the base model
    task: str  # "vqa" | "vat" | "vat_images"
    prompt: str
    image_paths: tuple[str, ...]
    max_tokens: int  # 0 for a classify request (no decode)
    prompt_words: int
    video: ClipInfo | None = None  # one video clip, placed before the text
    classify: bool = False  # answered by the adapter's task head (one prefill, no tokens)


@dataclass(frozen=True)
class _TaskInput:
    """What a task makes of request `index` given its sample and the dataset's image pool."""

    index: int
    sample: Sample
    image_pool: tuple[str, ...]  # every distinct image of the dataset, in first-seen order
    vat_images: int
    max_output_tokens: int


def _vqa(task_input: _TaskInput) -> tuple[str, tuple[str, ...], int]:
    sample = task_input.sample
    image = sample.image_paths[0] if sample.image_paths else _cycled(task_input, 1)[0]
    max_tokens = max(1, min(task_input.max_output_tokens, sample.output_words))
    return sample.prompt, (image,), max_tokens


def _vat(task_input: _TaskInput) -> tuple[str, tuple[str, ...], int]:
    return VAT_INSTRUCTION, _cycled(task_input, task_input.vat_images), 1


def _cycled(task_input: _TaskInput, count: int) -> tuple[str, ...]:
    """`count` consecutive images of the pool, request i starting at i * count (wrapping)."""
    pool = task_input.image_pool
    start = task_input.index * count
    return tuple(pool[(start + k) % len(pool)] for k in range(count))


TASKS: dict[str, Callable[[_TaskInput], tuple[str, tuple[str, ...], int]]] = {
    "vqa": _vqa,
    "vat": _vat,
    "vat_images": _vat,
}


def build_workload(
    arrivals: np.ndarray,
    adapters: np.ndarray,
    task: str,
    samples: Sequence[Sample],
    seed: int,
    *,
    vat_images: int = 6,
    max_output_tokens: int = 120,
    adapter_names: Sequence[str] | None = None,
) -> list[RequestSpec]:
    """One request per arrival, sorted by arrival; `adapters[i]` belongs to `arrivals[i]`.

    Adapter index k maps to `adapter_names[k]` (default `lora{k}`), k < 0 to the base model.
    Samples are cycled in a seeded shuffled order. Raises ValueError on an unknown task,
    mismatched lengths, no samples, or a dataset without images."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    times, indices = np.asarray(arrivals, dtype=np.float64), np.asarray(adapters, dtype=np.int64)
    if times.shape != indices.shape or times.ndim != 1:
        raise ValueError(f"arrivals {times.shape} and adapters {indices.shape} must be equal 1-D")
    if not samples:
        raise ValueError("no dataset samples")
    image_pool = tuple(dict.fromkeys(p for s in samples for p in s.image_paths))
    if not image_pool:
        raise ValueError(f"task {task!r} needs images, and the dataset has none")
    order = np.argsort(times, kind="stable")
    sample_order = np.random.default_rng(seed).permutation(len(samples))
    specs = []
    for i, row in enumerate(order):
        sample = samples[sample_order[i % len(samples)]]
        task_input = _TaskInput(i, sample, image_pool, vat_images, max_output_tokens)
        prompt, image_paths, max_tokens = TASKS[task](task_input)
        spec = RequestSpec(
            request_id=f"req-{i}",
            arrival_s=float(times[row]),
            adapter=_adapter_name(int(indices[row]), adapter_names),
            task=task,
            prompt=prompt,
            image_paths=image_paths,
            max_tokens=max_tokens,
            prompt_words=len(prompt.split()),
        )
        specs.append(spec)
    return specs


def _adapter_name(index: int, adapter_names: Sequence[str] | None) -> str | None:
    if index < 0:
        return None
    return adapter_names[index] if adapter_names is not None else f"lora{index}"


def workload_stats(specs: Sequence[RequestSpec]) -> dict:
    """Summary for the log: count, span, mean rate (1 / mean inter-arrival), inter-arrival CV,
    each adapter's share of the requests (the base model as "base"), each task's share, mean
    max_tokens and images."""
    if not specs:
        return {"count": 0}
    times = np.array([s.arrival_s for s in specs])
    duration_s = float(times.max() - times.min())
    shares = Counter(s.adapter or "base" for s in specs)
    tasks = Counter(s.task for s in specs)
    return {
        "count": len(specs),
        "duration_s": duration_s,
        "mean_rate": (len(specs) - 1) / duration_s if duration_s > 0 else float("nan"),
        "interarrival_cv": interarrival_cv(times),
        "adapter_share": {name: n / len(specs) for name, n in shares.most_common()},
        "task_share": {name: n / len(specs) for name, n in tasks.most_common()},
        "mean_max_tokens": float(np.mean([s.max_tokens for s in specs])),
        "mean_images": float(np.mean([len(s.image_paths) for s in specs])),
    }
