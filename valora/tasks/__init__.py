"""A reproducible, self-contained vision task suite: procedural datasets made from a seed.

Tasks (``TASKS``): ``colour``, ``count``, ``grounding``, ``ocr_digits``, ``latex_ocr`` (images)
and ``action``, ``clip_colour`` (videos). Generate them with::

    python -m valora.tasks --out DIR --tasks all --train 200 --val 50 --seed 0

which writes ``DIR/<task>/{train,val}.jsonl``, ``DIR/<task>/media/`` and ``DIR/tasks.json``.
Read a split back with ``valora.tasks.dataset.load_jsonl`` and ``resolve_media``.
"""

from __future__ import annotations

from valora.tasks.dataset import load_jsonl, resolve_media, validate_example
from valora.tasks.registry import TASKS, generate_suite, generate_task, get_task

__all__ = [
    "TASKS",
    "generate_suite",
    "generate_task",
    "get_task",
    "load_jsonl",
    "resolve_media",
    "validate_example",
]
