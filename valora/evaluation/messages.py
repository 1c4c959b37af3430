"""A dataset example's messages in the two shapes the runners send: the chat template's (media
parts as bare ``{"type": "image"}`` / ``{"type": "video"}`` with the media alongside, for the
offline ``LLM``) and OpenAI's (media inlined as base64 data URLs, for a server)."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path

from valora.evaluation.dataset import MEDIA

DEFAULT_MIME = {"image": "image/png", "video": "video/mp4"}


def _map_media_parts(messages: list[dict], convert) -> list[dict]:
    """``messages`` with every image / video part replaced by ``convert(kind, part)``, in order;
    string contents and other parts unchanged."""
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = [
            convert(part["type"], part) if part.get("type") in MEDIA else part for part in content
        ]
        out.append({**message, "content": parts})
    return out


def template_messages(messages: list[dict]) -> tuple[list[dict], list[str], list[str]]:
    """-> (messages for ``apply_chat_template``, image paths, video paths), media in order."""
    images, videos = [], []

    def bare(kind: str, part: dict) -> dict:
        (images if kind == "image" else videos).append(part[kind])
        return {"type": kind}

    return _map_media_parts(messages, bare), images, videos


def openai_messages(messages: list[dict], data_url=None) -> list[dict]:
    """Media parts -> ``image_url`` / ``video_url`` parts carrying ``data_url(kind, path)``."""
    data_url = data_url or file_data_url

    def inline(kind: str, part: dict) -> dict:
        return {"type": f"{kind}_url", f"{kind}_url": {"url": data_url(kind, part[kind])}}

    return _map_media_parts(messages, inline)


def file_data_url(kind: str, path: str) -> str:
    """``data:<mime>;base64,<file bytes>`` (mime from the suffix, else png / mp4)."""
    mime = mimetypes.guess_type(path)[0] or DEFAULT_MIME[kind]
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()
