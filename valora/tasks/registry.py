"""The task registry and the generator that writes a task's splits: ``DIR/<task>/train.jsonl``,
``DIR/<task>/val.jsonl``, optionally ``DIR/<task>/pretrain.jsonl``, media under
``DIR/<task>/media/``, and the ``DIR/tasks.json`` manifest.

The ``pretrain`` split is a captioning corpus for pre-training a base model: fresh scenes of the
same generators, asked "Describe the image." (or video) and answered with the task's caption
(``TaskSpec.caption``), never with the task's question or answer format. Its answers avoid the
val answers, so pre-training never sees a held-out string.

Each example is a pure function of (seed, task, split, index) (see ``common.example_rng``), so a
seed reproduces the JSONL byte for byte and the media pixel for pixel. Strata are balanced per
split; for ``disjoint_answers`` tasks a val example redraws until its answer is not a train one.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from valora.tasks.action import ACTION, CLIP_COLOUR, write_mp4
from valora.tasks.common import DESCRIBE, TaskSpec, balanced_strata, example_rng
from valora.tasks.latex import LATEX_OCR
from valora.tasks.ocr import OCR_DIGITS
from valora.tasks.shapes import COLOUR, COUNT, GROUNDING

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (COLOUR, COUNT, GROUNDING, OCR_DIGITS, LATEX_OCR, ACTION, CLIP_COLOUR)
}
MANIFEST = "tasks.json"
MAX_REDRAWS = 1000  # val draws per example before giving up on a fresh answer
_MEDIA_NAME = re.compile(r"^(train|val|pretrain)-\d+\.(png|mp4)$")


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; ``ValueError`` lists the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def _draft(
    spec: TaskSpec, seed: int, split: str, index: int, stratum: str, avoid: set[str]
) -> tuple[str, dict, np.random.Generator]:
    """(answer, params, rng) of one example; redraws while the answer is in ``avoid``."""
    rng = example_rng(seed, spec.name, split, index)
    for _ in range(MAX_REDRAWS):
        answer, params = spec.sample(rng, stratum)
        if answer not in avoid:
            return answer, params, rng
    raise ValueError(
        f"{spec.name}: no {stratum!r} answer outside the train set after {MAX_REDRAWS} draws; "
        "the answer space is exhausted, use fewer train examples"
    )


def _record(spec: TaskSpec, split: str, index: int, media: str, answer: str) -> dict:
    """One JSONL line's object, in the shared trainer/evaluator format (a pretrain line asks for
    a description and is scored by exact match)."""
    question = DESCRIBE[spec.modality] if split == "pretrain" else spec.question
    content = [
        {"type": spec.modality, spec.modality: media},
        {"type": "text", "text": question},
    ]
    return {
        "id": f"{spec.name}-{split}-{index}",
        "task": spec.name,
        "messages": [{"role": "user", "content": content}],
        "answer": answer,
        "metric": "exact" if split == "pretrain" else spec.metric,
    }


def _save_media(spec: TaskSpec, pixels: np.ndarray, path: Path) -> None:
    if spec.modality == "image":
        Image.fromarray(pixels, "RGB").save(path, format="PNG")
    else:
        write_mp4(pixels, path)


def _write_split(
    spec: TaskSpec, task_dir: Path, split: str, count: int, seed: int, avoid: set[str]
) -> list[str]:
    """Render and save one split's media and JSONL; -> its answers in order."""
    strata = balanced_strata(spec.strata, count, example_rng(seed, spec.name, split))
    lines, answers = [], []
    for index, stratum in enumerate(strata):
        answer, params, rng = _draft(spec, seed, split, index, stratum, avoid)
        media = f"media/{split}-{index:05d}{spec.suffix}"
        _save_media(spec, spec.render(params, rng), task_dir / media)
        target = spec.caption(params) if split == "pretrain" else answer
        lines.append(json.dumps(_record(spec, split, index, media, target)) + "\n")
        answers.append(answer)
    (task_dir / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8", newline="\n")
    return answers


def manifest_entry(
    spec: TaskSpec, num_train: int, num_val: int, seed: int, num_pretrain: int = 0
) -> dict:
    """The task's ``tasks.json`` entry."""
    entry = {
        "metric": spec.metric,
        "modality": spec.modality,
        "num_train": num_train,
        "num_val": num_val,
        "num_pretrain": num_pretrain,
        "description": spec.description,
        "question": spec.question,
        "seed": seed,
    }
    if spec.answers is not None:
        entry["answers"] = list(spec.answers)
    return entry | spec.manifest_extra


def generate_task(
    name: str, out_dir: str | Path, num_train: int, num_val: int, seed: int, num_pretrain: int = 0
) -> dict:
    """Write task ``name`` under ``out_dir/<name>/`` (train.jsonl, val.jsonl, pretrain.jsonl when
    ``num_pretrain``, media/), replacing media and a pretrain split an earlier run left there;
    -> its manifest entry (``tasks.json`` is not touched)."""
    spec = get_task(name)
    counts = (("num_train", num_train), ("num_val", num_val), ("num_pretrain", num_pretrain))
    for label, count in counts:
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"{label} must be a non-negative int, got {count!r}")
    task_dir = Path(out_dir) / name
    (task_dir / "media").mkdir(parents=True, exist_ok=True)
    for old in (task_dir / "media").iterdir():
        if _MEDIA_NAME.match(old.name):
            old.unlink()
    train_answers = _write_split(spec, task_dir, "train", num_train, seed, set())
    avoid = set(train_answers) if spec.disjoint_answers else set()
    val_answers = _write_split(spec, task_dir, "val", num_val, seed, avoid)
    (task_dir / "pretrain.jsonl").unlink(missing_ok=True)
    if num_pretrain:
        avoid = set(val_answers) if spec.disjoint_answers else set()
        _write_split(spec, task_dir, "pretrain", num_pretrain, seed, avoid)
    return manifest_entry(spec, num_train, num_val, seed, num_pretrain)


def write_manifest(out_dir: str | Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into ``out_dir/tasks.json`` (entries of other tasks are kept)."""
    path = Path(out_dir) / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest |= entries
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def generate_suite(
    out_dir: str | Path,
    names: list[str],
    num_train: int,
    num_val: int,
    seed: int,
    num_pretrain: int = 0,
) -> dict[str, float]:
    """Generate each named task and update the manifest; -> seconds taken per task."""
    for name in names:
        get_task(name)  # fail before writing anything
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    entries, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        entries[name] = generate_task(name, out_dir, num_train, num_val, seed, num_pretrain)
        seconds[name] = time.perf_counter() - start
    write_manifest(out_dir, entries)
    return seconds
