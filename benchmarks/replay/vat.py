"""The video-analytics (vat) workload: short video clips classified by the adapters' task heads
(one prefill pass each, no decode), mixed with visual-retrieval (vqa) traffic.

The request list is the vqa workload of the same arrivals and adapters (``build_workload``);
``round(vat_share * n)`` of its requests, chosen by a seeded permutation, become classify
requests on their adapter: a fixed instruction after one clip, the clips dealt in a seeded
shuffled order and cycled. Every vat request needs an adapter (the base model has no head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from replay.clips import MANIFEST, ClipInfo, load_manifest, write_clips
from replay.datasets import Sample
from replay.workload import RequestSpec, build_workload

VAT_VIDEO_INSTRUCTION = "Which action does this video clip show?"


def build_vat_workload(
    arrivals: np.ndarray,
    adapters: np.ndarray,
    samples: Sequence[Sample],
    clips: Sequence[ClipInfo],
    seed: int,
    *,
    vat_share: float = 0.5,
    max_output_tokens: int = 120,
    adapter_names: Sequence[str] | None = None,
) -> list[RequestSpec]:
    """vqa requests with a ``vat_share`` of them turned into classify requests on clips
    (module docstring). ValueError for a share outside [0, 1], no clips, or a vat request on
    the base model (adapter index < 0)."""
    if not 0.0 <= vat_share <= 1.0:
        raise ValueError(f"vat_share must lie in [0, 1], got {vat_share}")
    specs = build_workload(
        arrivals,
        adapters,
        "vqa",
        samples,
        seed,
        max_output_tokens=max_output_tokens,
        adapter_names=adapter_names,
    )
    num_vat = round(vat_share * len(specs))
    if num_vat and not clips:
        raise ValueError("the vat workload needs at least one clip")
    rng = np.random.default_rng([seed, 1])
    chosen = np.sort(rng.permutation(len(specs))[:num_vat])
    clip_order = rng.permutation(len(clips)) if clips else []
    for j, index in enumerate(chosen):
        clip = clips[clip_order[j % len(clips)]]
        specs[index] = _as_vat(specs[index], clip)
    return specs


def _as_vat(spec: RequestSpec, clip: ClipInfo) -> RequestSpec:
    if spec.adapter is None:
        raise ValueError(
            f"{spec.request_id}: a vat request needs an adapter with a task head, not the base "
            "model (use --num_adapters > 0)"
        )
    return replace(
        spec,
        task="vat",
        prompt=VAT_VIDEO_INSTRUCTION,
        image_paths=(),
        max_tokens=0,
        prompt_words=len(VAT_VIDEO_INSTRUCTION.split()),
        video=clip,
        classify=True,
    )


def clips_for_run(
    clips_dir: str | None, num_clips: int, scratch: str | Path, **options
) -> list[ClipInfo]:
    """The clips of ``clips_dir``'s manifest; without one, ``num_clips`` generated there (or in
    ``scratch`` when no directory is given); ``options`` go to ``write_clips``."""
    directory = Path(clips_dir) if clips_dir else Path(scratch)
    if (directory / MANIFEST).is_file():
        return load_manifest(directory)
    return write_clips(directory, num_clips, **options)
