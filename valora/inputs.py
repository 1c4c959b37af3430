"""Prompt processing: a user prompt (text, token ids, or text with images and videos) -> a
``Request``.

As with Hugging Face tokenizers, special tokens written in prompt text become their ids, and a
raw prompt carries one ``<|image_pad|>`` per image and one ``<|video_pad|>`` per video, expanded
here to that input's token count. A prompt dict may carry ``mm_processor_kwargs`` (vLLM's name:
min_pixels, max_pixels, fps, min_frames, max_frames) that override the processors' settings for
that prompt only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from valora.config import ModelConfig
from valora.mrope import mrope_positions
from valora.multimodal import (
    ImageProcessorConfig,
    ProcessedVision,
    expand_vision_placeholders,
    process_image,
)
from valora.processor_config import apply_overrides
from valora.request import ImageSpan, Request
from valora.sampling_params import SamplingParams
from valora.tokenizer import Tokenizer
from valora.video import VideoProcessorConfig, process_video

PromptType = str | list[int] | dict[str, Any]


@dataclass(frozen=True)
class ParsedPrompt:
    text: str | None
    token_ids: list[int] | None
    images: list
    videos: list
    mm_processor_kwargs: dict | None = None


def parse_prompt(prompt: PromptType) -> ParsedPrompt:
    """A user prompt -> its text or token ids, raw images and videos, and processor overrides."""
    if isinstance(prompt, str):
        return ParsedPrompt(prompt, None, [], [])
    if isinstance(prompt, list):
        if not all(isinstance(t, int) for t in prompt):
            raise ValueError("a token-id prompt must be a list of ints")
        return ParsedPrompt(None, prompt, [], [])
    if isinstance(prompt, dict) and ("prompt_token_ids" in prompt or "prompt" in prompt):
        data = prompt.get("multi_modal_data") or {}
        unknown = set(data) - {"image", "video"}
        if unknown:
            raise ValueError(f"unsupported multi_modal_data keys {sorted(unknown)}")
        images, videos = _as_list(data.get("image")), _as_list(data.get("video"), video=True)
        kwargs = prompt.get("mm_processor_kwargs")
        if "prompt_token_ids" in prompt:
            return ParsedPrompt(None, list(prompt["prompt_token_ids"]), images, videos, kwargs)
        return ParsedPrompt(prompt["prompt"], None, images, videos, kwargs)
    raise ValueError(
        "a prompt is a string, a list of token ids, or a dict with 'prompt' or "
        "'prompt_token_ids' (and optionally 'multi_modal_data': {'image': ..., 'video': ...})"
    )


def _as_list(value, video: bool = False) -> list:
    """One input or a list of them; a video given as a list of frames is one video (a list of
    such lists or of arrays/paths is several)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    if video and value and isinstance(value[0], Image.Image):
        return [value]
    return value


@dataclass(frozen=True)
class ProcessedPrompt:
    """A prompt tokenized, its images processed and placed: what a ``Request`` needs of it.
    Made without engine state (``process_prompt``), so servers make it off the engine thread."""

    token_ids: list[int]
    images: list[ProcessedVision]  # images and videos, in prompt order
    image_spans: list[ImageSpan]
    mrope_positions: np.ndarray  # [3, len(token_ids)]
    rope_delta: int


def process_prompt(
    prompt: PromptType,
    tokenizer: Tokenizer,
    model_config: ModelConfig,
    image_config: ImageProcessorConfig | None = None,
    video_config: VideoProcessorConfig | None = None,
) -> ProcessedPrompt:
    """Tokenize, check the ids, process the images and videos and expand their placeholders
    (CPU only; thread-safe)."""
    parsed = parse_prompt(prompt)
    token_ids = parsed.token_ids
    if token_ids is None:
        token_ids = tokenizer.encode(parsed.text)
    if not token_ids:
        raise ValueError("the prompt is empty")
    if any(t < 0 or t >= model_config.vocab_size for t in token_ids):
        raise ValueError(f"prompt token ids must lie in [0, {model_config.vocab_size})")
    image_config, video_config = apply_overrides(
        image_config or ImageProcessorConfig(),
        video_config or VideoProcessorConfig(),
        parsed.mm_processor_kwargs,
    )
    images = [process_image(im, image_config) for im in parsed.images]
    videos = [process_video(v, video_config) for v in parsed.videos]
    image_pad, video_pad = model_config.image_token_id, model_config.video_token_id
    token_ids, ordered = expand_vision_placeholders(token_ids, images, videos, image_pad, video_pad)
    pads = [video_pad if item.modality == "video" else image_pad for item in ordered]
    merge = model_config.vision.spatial_merge_size
    positions, rope_delta = mrope_positions(
        token_ids, [item.grid_thw for item in ordered], pads, merge
    )
    spans = _vision_spans(token_ids, ordered, pads)
    return ProcessedPrompt(token_ids, ordered, spans, positions, rope_delta)


def build_request(
    request_id: str,
    prompt: PromptType | ProcessedPrompt,
    params: SamplingParams,
    tokenizer: Tokenizer,
    model_config: ModelConfig,
    adapter: tuple[str, int] | None = None,
    image_config: ImageProcessorConfig | None = None,
    video_config: VideoProcessorConfig | None = None,
) -> Request:
    if not isinstance(prompt, ProcessedPrompt):
        prompt = process_prompt(prompt, tokenizer, model_config, image_config, video_config)
    return Request(
        request_id=request_id,
        prompt_token_ids=list(prompt.token_ids),
        sampling_params=params,
        adapter_id=adapter[0] if adapter else None,
        adapter_version=adapter[1] if adapter else 0,
        images=prompt.images,
        image_spans=prompt.image_spans,
        mrope_positions=prompt.mrope_positions,
        rope_delta=prompt.rope_delta,
        eos_token_ids=model_config.eos_token_ids,
    )


def _vision_spans(token_ids: list[int], items: list, pads: list[int]) -> list[ImageSpan]:
    spans, i = [], 0
    for index, (item, pad) in enumerate(zip(items, pads)):
        while token_ids[i] != pad:
            i += 1
        spans.append(ImageSpan(i, item.num_tokens, item.content_hash, index))
        i += item.num_tokens
    return spans
