"""The offline runner (an in-process ``LLM``) and the server runner (``python -m valora.eval
--server`` against a real server) on the tiny model: the same greedy predictions and head labels
for the same dummy adapters, written to a results file."""

from __future__ import annotations

import json

import pytest
from server_fixture import running_server

from valora.eval import run
from valora.evaluation.dataset import load_examples
from valora.evaluation.evaluate import evaluate
from valora.evaluation.offline import OfflineRunner
from valora.evaluation.report import results_record, write_results
from valora.llm import LLM

MAX_TOKENS = 8
ENGINE = {"device": "cpu", "lora_backend": "torch", "num_token": 8192, "max_model_len": 512}
ADAPTERS = ["base", "lora0", "lora1"]


@pytest.fixture(scope="module")
def offline(suite):
    """Offline results of base, lora0 (generating) and lora1 (through its task head)."""
    llm = LLM("tiny", num_dummy_adapters=2, **ENGINE)
    # the server gives every dummy adapter a 3-class head (--dummy-task-classes 3); lora1 here
    # gets the same one (same rank and seed: lora{i} has rank (8, 16)[i] and seed 1 + i)
    llm.engine.load_dummy_adapter("lora1", 16, seed=2, num_classes=3)
    runner = OfflineRunner(llm, max_tokens=MAX_TOKENS, use_tqdm=False)
    return evaluate(load_examples(suite), runner, ADAPTERS, head_adapters=["lora1"])


def test_offline_runner_predicts_and_scores(offline, tmp_path):
    assert [(r["task"], r["adapter"]) for r in offline.rows] == [
        (t, a) for a in ADAPTERS for t in ("colour", "caption", "ocr")
    ]
    assert len(offline.predictions) == 15
    heads = [p for p in offline.predictions if p["adapter"] == "lora1"]
    assert {p["prediction"] for p in heads} <= {"class_0", "class_1", "class_2"}
    texts = [p["prediction"] for p in offline.predictions if p["adapter"] != "lora1"]
    assert all(texts)
    by_adapter = {
        a: [p["prediction"] for p in offline.predictions if p["adapter"] == a] for a in ADAPTERS
    }
    assert by_adapter["base"] != by_adapter["lora0"]  # the adapter changes what is generated
    for row in offline.rows:
        assert 0 <= row["score"] <= (100 if row["metric"] == "bleu" else 1)
        assert row["mode"] == ("head" if row["adapter"] == "lora1" else "generate")
    write_results(tmp_path / "r.json", results_record(offline, "test"))
    assert json.loads((tmp_path / "r.json").read_text())["results"] == offline.rows


def test_server_runner_matches_offline(suite, offline, tmp_path, capsys):
    args = ("--num-adapter", "2", "--dummy-task-classes", "3", "--lora-backend", "torch")
    with running_server(*args, "--max-model-len", "512") as (url, _, _):
        record = run(
            ["--data", str(suite), "--server", url, "--adapters", *ADAPTERS, "--head", "lora1"]
            + ["--max-tokens", str(MAX_TOKENS), "--concurrency", "4", "--no-tqdm"]
            + ["--out", str(tmp_path / "server.json")]
        )
    assert record["predictions"] == offline.predictions
    assert record["results"] == offline.rows
    assert json.loads((tmp_path / "server.json").read_text()) == record
    assert record["command"].startswith("python -m valora.eval --data")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["task", "metric", "n", *ADAPTERS]


def test_offline_cli_with_a_task_adapter_map(suite, offline, tmp_path):
    engine = ["--device", "cpu", "--lora-backend", "torch", "--num-token", "8192"]
    record = run(
        ["--data", str(suite / "val.jsonl"), "--model", "tiny", "--num-dummy-adapters", "1"]
        + [*engine, "--max-model-len", "512", "--adapters", "base", "--task-adapter", "ocr=lora0"]
        + ["--max-tokens", str(MAX_TOKENS), "--no-tqdm", "--out", str(tmp_path / "cli.json")]
    )
    assert [(r["task"], r["adapter"]) for r in record["results"]] == [
        ("colour", "base"),
        ("caption", "base"),
        ("ocr", "base"),
        ("ocr", "lora0"),
    ]
    expected = [p for p in offline.predictions if p["adapter"] == "base" or p["task"] == "ocr"]
    assert record["predictions"] == [p for p in expected if p["adapter"] != "lora1"]
    assert record["setup"]["engine"]["backend"] == "torch"
