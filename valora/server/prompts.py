"""Request bodies -> engine prompts: chat messages through the chat template with their images
resolved under the media policy; completion prompts as text or token ids."""

from __future__ import annotations

import asyncio

from valora.server.media import MediaPolicy, resolve_image
from valora.server.protocol import ChatCompletionRequest, CompletionRequest


async def chat_prompt(body: ChatCompletionRequest, tokenizer, policy: MediaPolicy) -> dict:
    """-> {"prompt": text, "multi_modal_data": {"image": [...]}}; ValueError on bad input."""
    if not body.messages:
        raise ValueError("messages must not be empty")
    messages, urls = [], []
    for message in body.messages:
        if message.content is None or isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content or ""})
            continue
        parts = []
        for part in message.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text or ""})
            elif part.image_url is None:
                raise ValueError("an image_url part needs an image_url object with a url")
            else:
                parts.append({"type": "image"})
                urls.append(part.image_url.url)
        messages.append({"role": message.role, "content": parts})
    if len(urls) > policy.max_images_per_request:
        raise ValueError(
            f"{len(urls)} images in one request; at most "
            f"{policy.max_images_per_request} are allowed"
        )
    if all(not m["content"] for m in messages):
        raise ValueError("every message is empty")
    images = await asyncio.gather(*(asyncio.to_thread(resolve_image, u, policy) for u in urls))
    text = tokenizer.apply_chat_template([_role(m) for m in messages])
    return {"prompt": text, "multi_modal_data": {"image": list(images)}}


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
