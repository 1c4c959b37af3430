"""The procedural task suite (valora.tasks): every task generates and loads back, answers are
well formed, a seed reproduces the data exactly, train and val do not overlap, the loader rejects
malformed lines with clear errors. CPU only, small splits."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from matplotlib.mathtext import MathTextParser
from PIL import Image

from valora.tasks import TASKS, generate_task, load_jsonl, resolve_media
from valora.tasks.__main__ import main, task_names
from valora.tasks.draw import PALETTE
from valora.tasks.registry import _draft

NUM_TRAIN, NUM_VAL = 12, 6
BOX = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>")


def _generate(out: Path, seed: int = 0) -> Path:
    main(
        ["--out", str(out), "--tasks", "all", "--train", str(NUM_TRAIN), "--val", str(NUM_VAL)]
        + ["--seed", str(seed)]
    )
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("suite"))


def _split(root: Path, task: str, split: str) -> list[dict]:
    return load_jsonl(root / task / f"{split}.jsonl")


def _pixels(path: Path) -> np.ndarray:
    """Decoded pixels: [H, W, 3] of a PNG, [T, H, W, 3] of an mp4."""
    if path.suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _media(example: dict) -> str:
    item = example["messages"][0]["content"][0]
    return item[item["type"]]


def _well_formed(task: str, answer: str) -> bool:
    spec = TASKS[task]
    if spec.answers is not None:
        return answer in spec.answers
    if task == "grounding":
        match = BOX.fullmatch(answer)
        x1, y1, x2, y2 = map(int, match.groups()) if match else (0, 0, 0, 0)
        return bool(match) and 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000
    if task == "ocr_digits":
        return re.fullmatch(r"[1-9][0-9]{2,5}", answer) is not None
    if task == "latex_ocr":
        MathTextParser("path").parse(f"${answer}$")  # raises on bad LaTeX
        return "$" not in answer and " " not in answer
    raise AssertionError(f"no check for task {task}")


def test_manifest(suite: Path) -> None:
    manifest = json.loads((suite / "tasks.json").read_text())
    assert set(manifest) == set(TASKS)
    for name, entry in manifest.items():
        assert entry["metric"] == TASKS[name].metric in ("exact", "bleu", "edit")
        assert entry["modality"] == TASKS[name].modality
        assert (entry["num_train"], entry["num_val"]) == (NUM_TRAIN, NUM_VAL)
        assert entry["description"]
    assert manifest["grounding"]["future_metrics"] == ["iou"]
    assert manifest["latex_ocr"]["secondary_metrics"] == ["edit"]


@pytest.mark.parametrize("task", list(TASKS))
def test_task_loads_with_well_formed_answers(suite: Path, task: str) -> None:
    spec = TASKS[task]
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        examples = _split(suite, task, split)
        assert [e["id"] for e in examples] == [f"{task}-{split}-{i}" for i in range(count)]
        for example in examples:
            assert example["task"] == task and example["metric"] == spec.metric
            content = example["messages"][0]["content"]
            assert [c["type"] for c in content] == [spec.modality, "text"]
            assert content[1]["text"] == spec.question
            assert _well_formed(task, example["answer"]), example["answer"]
        images, videos = resolve_media(examples[0], suite / task)
        if spec.modality == "image":
            assert len(images) == 1 and not videos and images[0].mode == "RGB"
            assert all(side % 28 == 0 for side in images[0].size)
        else:
            assert not images and len(videos) == 1
            assert _pixels(Path(videos[0])).shape == (8, 56, 84, 3)


@pytest.mark.parametrize("task", ["colour", "count", "action", "clip_colour", "ocr_digits"])
def test_answers_balanced(suite: Path, task: str) -> None:
    for split in ("train", "val"):
        answers = [e["answer"] for e in _split(suite, task, split)]
        keys = Counter(len(a) for a in answers) if task == "ocr_digits" else Counter(answers)
        num_classes = len(TASKS[task].strata)
        assert len(keys) == min(num_classes, len(answers))
        assert max(keys.values()) - min(keys.values()) <= 1


def test_grounding_box_bounds_the_red_pixels(suite: Path) -> None:
    for example in _split(suite, "grounding", "train"):
        pixels = _pixels(suite / "grounding" / _media(example)).astype(int)
        red = (pixels[..., 0] > 170) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
        rows, cols = np.nonzero(red)
        height, width = red.shape
        expected = (cols.min() / width, rows.min() / height, (cols.max() + 1) / width)
        expected += ((rows.max() + 1) / height,)
        got = [int(v) / 1000 for v in BOX.fullmatch(example["answer"]).groups()]
        assert np.allclose(got, expected, atol=0.0011), (got, expected)


def _motion(clip: Path) -> str:
    """The direction the clip's saturated square moves, from its first to its last frame."""
    steps = {(-1, 0): "left", (1, 0): "right", (0, -1): "up", (0, 1): "down"}
    frames = _pixels(clip).astype(int)
    saturated = frames.max(axis=-1) - frames.min(axis=-1) > 80  # the square, not the grey
    centres = [np.argwhere(frame).mean(axis=0) for frame in saturated]  # (row, col)
    dy, dx = centres[-1] - centres[0]
    return steps.get(tuple(np.sign([round(dx / 4), round(dy / 4)]).tolist()), "none")


def test_action_clip_moves_the_answered_way(suite: Path) -> None:
    for example in _split(suite, "action", "val"):
        assert _motion(suite / "action" / _media(example)) == example["answer"]


def test_clip_colour_is_the_squares_colour(suite: Path) -> None:
    for example in _split(suite, "clip_colour", "val"):
        frames = _pixels(suite / "clip_colour" / _media(example)).astype(int)
        square = frames[frames.max(axis=-1) - frames.min(axis=-1) > 80].mean(axis=0)  # RGB
        nearest = min(PALETTE, key=lambda name: np.abs(np.array(PALETTE[name]) - square).sum())
        assert nearest == example["answer"]


def test_same_seed_same_data(suite: Path, tmp_path: Path) -> None:
    again = _generate(tmp_path)
    assert (again / "tasks.json").read_bytes() == (suite / "tasks.json").read_bytes()
    for task in TASKS:
        for split in ("train", "val"):
            jsonl = f"{task}/{split}.jsonl"
            assert (again / jsonl).read_bytes() == (suite / jsonl).read_bytes()
            for example in _split(suite, task, split):
                media = f"{task}/{_media(example)}"
                assert np.array_equal(_pixels(again / media), _pixels(suite / media)), media


def test_other_seed_other_data(suite: Path, tmp_path: Path) -> None:
    for task in ("colour", "latex_ocr"):
        generate_task(task, tmp_path, NUM_TRAIN, NUM_VAL, seed=1)
        first = _pixels(tmp_path / task / "media" / "train-00000.png")
        assert not np.array_equal(first, _pixels(suite / task / "media" / "train-00000.png"))
    latex = [e["answer"] for e in _split(tmp_path, "latex_ocr", "train")]
    assert latex != [e["answer"] for e in _split(suite, "latex_ocr", "train")]


@pytest.mark.parametrize("task", list(TASKS))
def test_train_and_val_disjoint(suite: Path, task: str) -> None:
    train, val = _split(suite, task, "train"), _split(suite, task, "val")
    assert not {e["id"] for e in train} & {e["id"] for e in val}
    assert not {_media(e) for e in train} & {_media(e) for e in val}
    digests = {
        split: {hashlib.sha1(_pixels(suite / task / _media(e)).tobytes()).hexdigest() for e in xs}
        for split, xs in (("train", train), ("val", val))
    }
    assert not digests["train"] & digests["val"]
    if TASKS[task].disjoint_answers:
        assert not {e["answer"] for e in train} & {e["answer"] for e in val}


CAPTIONS = {
    "colour": re.compile(r"^(red|green|blue|yellow) (circle|square|triangle)$"),
    "count": re.compile(r"^(\w+ \w+|(two|three|four|five|six) \w+ \w+s)$"),
    "grounding": re.compile(r"^(three|four|five) shapes: a red \w+(, a \w+ \w+)* and a \w+ \w+$"),
    "ocr_digits": re.compile(r"^the number [1-9]\d{2,5}$"),
    "latex_ocr": re.compile(r"^a typeset formula$"),
    "action": re.compile(r"^a \w+ square moving (left|right|up|down)$"),
    "clip_colour": re.compile(r"^a (red|green|blue|yellow) square moving (left|right|up|down)$"),
}


@pytest.fixture(scope="module")
def pretrain_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    main(["--out", str(out), "--train", "6", "--val", "6", "--pretrain", "12", "--seed", "3"])
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_pretrain_split_is_captions_never_the_task(pretrain_suite: Path, task: str) -> None:
    """The captioning split asks for a description (never the task's question), answers with a
    caption of the scene's content, and (for open answer spaces) never shows a val string."""
    pretrain = _split(pretrain_suite, task, "pretrain")
    val = _split(pretrain_suite, task, "val")
    assert len(pretrain) == 12
    assert json.loads((pretrain_suite / "tasks.json").read_text())[task]["num_pretrain"] == 12
    modality = TASKS[task].modality
    for example in pretrain:
        text = example["messages"][0]["content"][1]["text"]
        assert text == f"Describe the {modality}." and text != TASKS[task].question
        assert CAPTIONS[task].match(example["answer"]), example["answer"]
        assert (pretrain_suite / task / _media(example)).is_file()
    if task == "ocr_digits":
        shown = {e["answer"].removeprefix("the number ") for e in pretrain}
        assert not shown & {e["answer"] for e in val}
    if task == "action":  # the caption's direction is the clip's motion
        for example in pretrain:
            assert example["answer"].endswith(_motion(pretrain_suite / task / _media(example)))


def test_without_pretrain_no_pretrain_split(suite: Path) -> None:
    assert not list(suite.glob("*/pretrain.jsonl"))


def test_regenerating_replaces_old_media(tmp_path: Path) -> None:
    generate_task("count", tmp_path, 5, 3, seed=0)
    generate_task("count", tmp_path, 2, 1, seed=0)
    names = sorted(p.name for p in (tmp_path / "count" / "media").iterdir())
    assert names == ["train-00000.png", "train-00001.png", "val-00000.png"]


def test_exhausted_answer_space_is_an_error() -> None:
    spec = TASKS["colour"]
    with pytest.raises(ValueError, match="exhausted"):
        _draft(spec, 0, "val", 0, "red", avoid=set(spec.answers))


def test_cli_task_names_and_bad_arguments(tmp_path: Path) -> None:
    assert task_names("all") == list(TASKS)
    assert task_names(" count, colour,count ,") == ["count", "colour"]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        main(["--out", str(tmp_path), "--tasks", "count,nope"])
    assert not (tmp_path / "count").exists()  # nothing written before the check
    with pytest.raises(ValueError, match="seed"):
        generate_task("count", tmp_path, 2, 1, seed=-1)
    with pytest.raises(ValueError, match="num_val"):
        generate_task("count", tmp_path, 2, -1, seed=0)


def _valid_record() -> dict:
    content = [{"type": "image", "image": "media/a.png"}, {"type": "text", "text": "Q?"}]
    return {
        "id": "t-train-0",
        "task": "t",
        "messages": [{"role": "user", "content": content}],
        "answer": "A",
        "metric": "exact",
    }


def _break(record: dict, how: str) -> dict | str:
    content = record["messages"][0]["content"]
    if how == "missing key":
        del record["answer"]
    elif how == "unknown content type":
        content[0] = {"type": "audio", "audio": "media/a.wav"}
    elif how == "not found":
        content[0]["image"] = "media/missing.png"
    elif how == "metric":
        record["metric"] = "rouge"
    elif how == "role":
        record["messages"][0]["role"] = "robot"
    elif how == "invalid JSON":
        return "{not json"
    return record


@pytest.mark.parametrize(
    "how", ["missing key", "unknown content type", "not found", "metric", "role", "invalid JSON"]
)
def test_loader_rejects_malformed_lines(tmp_path: Path, how: str) -> None:
    (tmp_path / "media").mkdir()
    Image.new("RGB", (28, 28)).save(tmp_path / "media" / "a.png")
    good = json.dumps(_valid_record())
    bad = _break(_valid_record(), how)
    bad = bad if isinstance(bad, str) else json.dumps(bad)
    path = tmp_path / "split.jsonl"
    path.write_text(f"{good}\n\n{bad}\n")
    with pytest.raises(ValueError, match=f"split.jsonl:3[:,] .*{how}"):
        load_jsonl(path)
    path.write_text(f"{good}\n")
    images, videos = resolve_media(load_jsonl(path)[0], tmp_path)
    assert [image.size for image in images] == [(28, 28)] and videos == []
