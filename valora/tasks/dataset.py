"""Reading a task split back: ``load_jsonl`` (validated) and ``resolve_media``.

One JSON object a line::

    {"id": "<task>-<split>-<i>", "task": "<task>",
     "messages": [{"role": "user", "content": [
         {"type": "image", "image": "media/<file>.png"}
           | {"type": "video", "video": "media/<file>.mp4"},
         {"type": "text", "text": "<question>"}]}],
     "answer": "<target text>", "metric": "exact" | "bleu" | "edit"}

Media paths are relative to the JSONL file's directory. ``TASKS`` and ``generate_task`` are
re-exported from ``valora.tasks.registry`` for callers that want one import.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from valora.tasks.common import METRICS
from valora.tasks.registry import TASKS, generate_task

__all__ = ["TASKS", "generate_task", "load_jsonl", "resolve_media", "validate_example"]

REQUIRED = {"id": str, "task": str, "messages": list, "answer": str, "metric": str}
ROLES = ("system", "user", "assistant")
CONTENT_TYPES = ("image", "video", "text")


def _check_content(item: object, root: Path, where: str) -> None:
    if not isinstance(item, dict) or item.get("type") not in CONTENT_TYPES:
        kind = item.get("type") if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"{where}: unknown content type {kind!r}; expected one of {CONTENT_TYPES}")
    kind = item["type"]
    if not isinstance(item.get(kind), str):
        raise ValueError(f"{where}: a {kind!r} item needs a string {kind!r} key")
    if kind != "text" and not (root / item[kind]).is_file():
        raise ValueError(f"{where}: {kind} file {root / item[kind]} not found")


def validate_example(example: object, root: str | Path, where: str = "example") -> None:
    """Raise ``ValueError`` (prefixed with ``where``) unless ``example`` is in the JSONL format
    and its media files exist under ``root``."""
    if not isinstance(example, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(example).__name__}")
    for key, kind in REQUIRED.items():
        if key not in example:
            raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(example[key], kind):
            raise ValueError(f"{where}: {key!r} must be a {kind.__name__}")
    if example["metric"] not in METRICS:
        raise ValueError(f"{where}: metric {example['metric']!r} is not one of {METRICS}")
    if not example["messages"]:
        raise ValueError(f"{where}: 'messages' is empty")
    for number, message in enumerate(example["messages"]):
        at = f"{where}, message {number}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"{at}: needs a 'role' in {ROLES}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"{at}: 'content' must be a string or a list of items")
        for item in content:
            _check_content(item, Path(root), at)


def load_jsonl(path: str | Path) -> list[dict]:
    """All examples of a JSONL split, validated (see ``validate_example``); ``ValueError`` names
    the file and line of the first problem."""
    path = Path(path)
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON ({error})") from None
        validate_example(example, path.parent, where)
        examples.append(example)
    return examples


def resolve_media(example: dict, root: str | Path) -> tuple[list[Image.Image], list[str]]:
    """(RGB images loaded into memory, video file paths) of ``example``, each in message order;
    ``root`` is the directory of the example's JSONL file."""
    root = Path(root)
    images, videos = [], []
    for message in example["messages"]:
        content = message["content"]
        for item in [] if isinstance(content, str) else content:
            if item["type"] == "image":
                with Image.open(root / item["image"]) as image:
                    images.append(image.convert("RGB"))
            elif item["type"] == "video":
                videos.append(str(root / item["video"]))
    return images, videos
