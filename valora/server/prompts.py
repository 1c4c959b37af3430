"""Request bodies -> engine prompts: chat messages through the chat template with their images
and videos resolved under the media policy; completion prompts as text or token ids."""

from __future__ import annotations

import asyncio

from valora.processor_config import apply_overrides
from valora.server.media import MediaPolicy, resolve_image, resolve_video
from valora.server.protocol import ChatMessage, CompletionRequest


async def chat_prompt(
    messages: list[ChatMessage], engine, policy: MediaPolicy, mm_kwargs: dict | None = None
) -> dict:
    """-> {"prompt": text, "multi_modal_data": {"image": [...], "video": [...]}} (and the
    request's ``mm_processor_kwargs``); ValueError on bad input. Videos are decoded and sampled
    here (fps and frame bounds from the engine's video processor settings and ``mm_kwargs``)."""
    if not messages:
        raise ValueError("messages must not be empty")
    _, video_config = apply_overrides(engine.image_config, engine.video_config, mm_kwargs)
    templated, urls = _template_messages(messages)
    _check_counts(urls, policy)
    if all(not m["content"] for m in templated):
        raise ValueError("every message is empty")
    images = asyncio.gather(
        *(asyncio.to_thread(resolve_image, u, policy) for kind, u in urls if kind == "image")
    )
    videos = asyncio.gather(
        *(
            asyncio.to_thread(resolve_video, u, policy, video_config)
            for kind, u in urls
            if kind == "video"
        )
    )
    images, videos = await asyncio.gather(images, videos)
    text = engine.tokenizer.apply_chat_template([_role(m) for m in templated])
    prompt = {"prompt": text, "multi_modal_data": {"image": list(images), "video": list(videos)}}
    if mm_kwargs:
        prompt["mm_processor_kwargs"] = mm_kwargs
    return prompt


def _template_messages(messages: list[ChatMessage]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Messages as the chat template takes them, and the (kind, url) of each media part."""
    templated, urls = [], []
    for message in messages:
        if message.content is None or isinstance(message.content, str):
            templated.append({"role": message.role, "content": message.content or ""})
            continue
        parts = []
        for part in message.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text or ""})
                continue
            media = part.image_url if part.type == "image_url" else part.video_url
            if media is None:
                raise ValueError(f"an {part.type} part needs an {part.type} object with a url")
            kind = "image" if part.type == "image_url" else "video"
            parts.append({"type": kind})
            urls.append((kind, media.url))
        templated.append({"role": message.role, "content": parts})
    return templated, urls


def _check_counts(urls: list[tuple[str, str]], policy: MediaPolicy) -> None:
    for kind, limit in (
        ("image", policy.max_images_per_request),
        ("video", policy.max_videos_per_request),
    ):
        count = sum(1 for k, _ in urls if k == kind)
        if count > limit:
            raise ValueError(f"{count} {kind}s in one request; at most {limit} are allowed")


def _role(message: dict) -> dict:
    """The template knows system / user / assistant; OpenAI's "developer" is a system turn."""
    return {**message, "role": "system"} if message["role"] == "developer" else message


def completion_prompt(body: CompletionRequest):
    """A string, or token ids; a list of strings is one prompt per string (only one allowed)."""
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise ValueError("batched prompts are not supported: send one prompt per request")
        prompt = prompt[0]
    if not prompt:
        raise ValueError("the prompt is empty")
    return prompt
