"""Planning, scoring, loading and the table, with a predictor that answers from a lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from valora.evaluation.dataset import load_examples, split_files
from valora.evaluation.evaluate import evaluate, plan
from valora.evaluation.messages import openai_messages, template_messages
from valora.evaluation.report import format_table, results_record, write_results


def test_loader_resolves_media_against_the_file(suite):
    examples = load_examples(suite, "val")
    assert [e["task"] for e in examples] == ["colour", "colour", "caption", "caption", "ocr"]
    image = examples[0]["messages"][0]["content"][0]["image"]
    assert Path(image) == suite / "media" / "red.png" and Path(image).is_file()
    assert load_examples(suite / "val.jsonl") == examples
    with pytest.raises(FileNotFoundError):
        split_files(suite, "test")


def test_message_shapes(suite):
    messages = load_examples(suite)[3]["messages"]
    templated, images, videos = template_messages(messages)
    assert templated[0]["content"][0] == {"type": "video"} and images == []
    assert videos == [str(suite / "media" / "clip.mp4")]
    part = openai_messages(messages)[0]["content"][0]
    assert part["type"] == "video_url"
    assert part["video_url"]["url"].startswith("data:video/mp4;base64,")


def test_plan_restricts_mapped_adapters():
    tasks = ["colour", "caption", "ocr"]
    pairs = plan(tasks, ["base", "a"], {"colour": ["a"], "ocr": ["b"]})
    assert pairs == [(t, "base") for t in tasks] + [("colour", "a"), ("ocr", "b")]
    assert plan(tasks, ["base", "a"]) == [(t, x) for x in ("base", "a") for t in tasks]
    with pytest.raises(ValueError, match="not in the data"):
        plan(tasks, ["base"], {"nope": ["a"]})


def test_evaluate_scores_each_task_with_its_metric(suite, tmp_path):
    examples = load_examples(suite)
    calls = []

    def predict(batch, adapters, classify):
        calls.append((len(batch), sorted(set(adapters)), classify))
        if classify:
            return ["red"] * len(batch)
        return [e["answer"] if a == "good" else "nothing" for e, a in zip(batch, adapters)]

    result = evaluate(examples, predict, ["base", "good"], {"colour": ["head"]}, ["head"])
    assert calls == [(10, ["base", "good"], False), (2, ["head"], True)]  # one call per mode
    rows = {(r["task"], r["adapter"]): r for r in result.rows}
    assert rows[("caption", "good")]["score"] == pytest.approx(100.0)
    assert rows[("ocr", "good")]["metric"] == "edit" and rows[("ocr", "good")]["score"] == 1.0
    assert rows[("colour", "base")]["score"] == 0.0
    head = rows[("colour", "head")]
    assert (head["mode"], head["metric"], head["score"], head["n"]) == ("head", "classify", 0.5, 2)
    assert len(result.predictions) == 12
    write_results(tmp_path / "r.json", results_record(result, "cmd"))
    record = json.loads((tmp_path / "r.json").read_text())
    assert set(record) == {"command", "versions", "setup", "results", "predictions"}
    table = format_table(result.rows).splitlines()
    assert table[0].split() == ["task", "metric", "n", "base", "good", "head"]
    assert table[1].split() == ["colour", "classify/exact", "2", "0.000", "1.000", "0.500"]
    assert table[2].split()[-1] == "-"  # head adapter only ran on its task


def test_base_has_no_head(suite):
    with pytest.raises(ValueError, match="no task head"):
        evaluate(load_examples(suite), lambda *a: [], ["base"], head_adapters=["base"])


def test_reads_the_generated_suite_layout(tmp_path):
    """``python -m valora.tasks``'s layout: DIR/<task>/{train,val}.jsonl with media/ beside."""
    from valora.tasks import generate_suite

    generate_suite(tmp_path, ["colour", "action"], 0, 2, 0)
    examples = load_examples(tmp_path, "val")
    assert sorted({e["task"] for e in examples}) == ["action", "colour"] and len(examples) == 4
    kinds = [part["type"] for e in examples for part in e["messages"][0]["content"]]
    assert {"image", "video"} <= set(kinds)
    for example in examples:
        _, images, videos = template_messages(example["messages"])
        assert all(Path(path).is_absolute() and Path(path).is_file() for path in images + videos)
    result = evaluate(examples, lambda batch, adapters, classify: [e["answer"] for e in batch])
    assert [r["score"] for r in result.rows] == [1.0, 1.0]
