"""Prompt processing: a user prompt (text, token ids, or text with images) -> a ``Request``.

As with Hugging Face tokenizers, special tokens written in prompt text become their ids, and a
raw prompt carries one ``<|image_pad|>`` per image, expanded here to that image's token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from valora.config import ModelConfig
from valora.mrope import mrope_positions
from valora.multimodal import (
    ImageProcessorConfig,
    ProcessedImage,
    expand_image_placeholders,
    process_image,
)
from valora.request import ImageSpan, Request
from valora.sampling_params import SamplingParams
from valora.tokenizer import Tokenizer

PromptType = str | list[int] | dict[str, Any]


def parse_prompt(prompt: PromptType) -> tuple[str | None, list[int] | None, list]:
    """-> (text or None, token ids or None, raw images)."""
    if isinstance(prompt, str):
        return prompt, None, []
    if isinstance(prompt, list):
        if not all(isinstance(t, int) for t in prompt):
            raise ValueError("a token-id prompt must be a list of ints")
        return None, prompt, []
    if isinstance(prompt, dict):
        images = (prompt.get("multi_modal_data") or {}).get("image", [])
        images = images if isinstance(images, list) else [images]
        if "prompt_token_ids" in prompt:
            return None, list(prompt["prompt_token_ids"]), images
        if "prompt" in prompt:
            return prompt["prompt"], None, images
    raise ValueError(
        "a prompt is a string, a list of token ids, or a dict with 'prompt' or "
        "'prompt_token_ids' (and optionally 'multi_modal_data': {'image': ...})"
    )


@dataclass(frozen=True)
class ProcessedPrompt:
    """A prompt tokenized, its images processed and placed: what a ``Request`` needs of it.
    Made without engine state (``process_prompt``), so servers make it off the engine thread."""

    token_ids: list[int]
    images: list[ProcessedImage]
    image_spans: list[ImageSpan]
    mrope_positions: np.ndarray  # [3, len(token_ids)]
    rope_delta: int


def process_prompt(
    prompt: PromptType,
    tokenizer: Tokenizer,
    model_config: ModelConfig,
    image_config: ImageProcessorConfig | None = None,
) -> ProcessedPrompt:
    """Tokenize, check the ids, process the images and expand their placeholders (CPU only;
    thread-safe)."""
    text, token_ids, raw_images = parse_prompt(prompt)
    if token_ids is None:
        token_ids = tokenizer.encode(text)
    if not token_ids:
        raise ValueError("the prompt is empty")
    if any(t < 0 or t >= model_config.vocab_size for t in token_ids):
        raise ValueError(f"prompt token ids must lie in [0, {model_config.vocab_size})")
    image_config = image_config or ImageProcessorConfig()
    images = [process_image(im, image_config) for im in raw_images]
    pad = model_config.image_token_id
    token_ids = expand_image_placeholders(token_ids, images, pad)
    merge = model_config.vision.spatial_merge_size
    positions, rope_delta = mrope_positions(token_ids, [im.grid_thw for im in images], pad, merge)
    return ProcessedPrompt(
        token_ids, images, _image_spans(token_ids, images, pad), positions, rope_delta
    )


def build_request(
    request_id: str,
    prompt: PromptType | ProcessedPrompt,
    params: SamplingParams,
    tokenizer: Tokenizer,
    model_config: ModelConfig,
    adapter: tuple[str, int] | None = None,
    image_config: ImageProcessorConfig | None = None,
) -> Request:
    if not isinstance(prompt, ProcessedPrompt):
        prompt = process_prompt(prompt, tokenizer, model_config, image_config)
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


def _image_spans(token_ids: list[int], images: list, pad: int) -> list[ImageSpan]:
    spans, i = [], 0
    for index, image in enumerate(images):
        while token_ids[i] != pad:
            i += 1
        spans.append(ImageSpan(i, image.num_tokens, image.content_hash, index))
        i += image.num_tokens
    return spans
