"""Finding and reading a task suite's splits for evaluation.

The format and its validation are ``valora.tasks.dataset``'s (``load_jsonl``): one example a
line, ``{"id", "task", "messages", "answer", "metric"}``, media parts ``{"type": "image",
"image": "media/x.png"}`` / ``{"type": "video", "video": "media/x.mp4"}`` relative to the JSONL
file's directory. Here media paths are made absolute, so an example stands on its own
afterwards (several task directories can be evaluated together).
"""

from __future__ import annotations

from pathlib import Path

from valora.tasks.dataset import load_jsonl

MEDIA = ("image", "video")


def load_split(path: str | Path) -> list[dict]:
    """The examples of one JSONL file (validated), media paths made absolute."""
    path = Path(path)
    return [
        {**e, "messages": [_absolute(m, path.parent) for m in e["messages"]]}
        for e in load_jsonl(path)
    ]


def _absolute(message: dict, root: Path) -> dict:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = [
        {**part, part["type"]: str(root / part[part["type"]])}
        if part.get("type") in MEDIA
        else part
        for part in content
    ]
    return {**message, "content": parts}


def split_files(data: str | Path, split: str = "val") -> list[Path]:
    """The JSONL files of ``split``: ``data`` itself when it is a file, else ``DATA/SPLIT.jsonl``,
    else one ``DATA/<task>/SPLIT.jsonl`` per task directory (``python -m valora.tasks``'s
    layout)."""
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"no dataset at {data}")
    if (data / f"{split}.jsonl").is_file():
        return [data / f"{split}.jsonl"]
    files = sorted(data.glob(f"*/{split}.jsonl"))
    if not files:
        raise FileNotFoundError(f"no {split}.jsonl in {data} or its task directories")
    return files


def load_examples(data: str | Path, split: str = "val") -> list[dict]:
    """Every example of ``split`` under ``data`` (see ``split_files``)."""
    return [example for path in split_files(data, split) for example in load_split(path)]
