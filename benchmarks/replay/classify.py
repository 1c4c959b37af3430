"""Classify requests over HTTP: vLLM's ``POST /v1/classify`` body for a replayed request and
what its answer fills in. The video goes as an mp4 data URL with ``mm_processor_kwargs.fps`` at
the clip's own rate, so the server keeps every frame (as the in-process path, which passes the
decoded frames)."""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replay.metrics import RequestResult
    from replay.workload import RequestSpec


@cache
def video_data_url(path: str) -> str:
    return "data:video/mp4;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def classify_body(spec: RequestSpec, messages: list[dict]) -> dict:
    """``{"model": the adapter, "messages": ...}``, plus the clip's fps when it has one."""
    body = {"model": spec.adapter, "messages": messages}
    if spec.video is not None:
        body["mm_processor_kwargs"] = {"fps": spec.video.fps}
    return body


def take_classification(result: RequestResult, response: dict) -> None:
    """The answer's label and token counts into ``result``; RuntimeError for an answer without
    exactly one classification."""
    data = response.get("data") or []
    if len(data) != 1:
        raise RuntimeError(f"expected one classification, got {len(data)}: {str(response)[:300]}")
    result.label = data[0]["label"]
    usage = response.get("usage") or {}
    result.prompt_tokens = usage.get("prompt_tokens", 0)
    result.output_tokens = 0
