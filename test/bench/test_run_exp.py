"""End-to-end replays with the tiny model: 20 seconds of arrivals against a real server over
HTTP streaming, and a short replay on the in-process engine; the result file and the summary
agree with what was sent."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import run_exp  # noqa: E402
from server_fixture import running_server  # noqa: E402


def replay_args(out, *extra: str) -> list[str]:
    return [
        "--num_adapters",
        "4",
        "--skewness",
        "0.5",
        "--req_rate",
        "2",
        "--arrival",
        "poisson",
        "--duration",
        "20",
        "--max_output_tokens",
        "8",
        "--seed",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def read(path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines[:-1], lines[-1]


def test_twenty_second_replay_against_the_tiny_server(tmp_path):
    out = tmp_path / "vqa.jsonl"
    # the torch LoRA backend: under pytest the Triton kernels would run in the interpreter
    server = ("--num-adapter", "4", "--scheduler", "valora", "--lora-backend", "torch")
    with running_server(*server) as (url, engine, _):
        summary = run_exp.main(replay_args(out, "--server", url, "--task", "vqa"))
        snap = engine.snapshot()  # every request finished: no blocks, pins or refs held
        assert snap.kv_blocks_in_use == 0 and snap.is_idle
    requests, record = read(out)
    assert len(requests) >= 20  # Poisson(2/s) over 20 s
    assert all(r["success"] for r in requests), [r["error"] for r in requests if not r["success"]]
    assert record["summary"]["completed"] == len(requests) == summary["completed"]
    assert all(r["num_images"] == 1 and 1 <= r["output_tokens"] <= 8 for r in requests)
    assert all(r["ttft"] is not None and r["ttft"] <= r["e2e"] for r in requests)
    assert {r["adapter"] for r in requests} <= {"lora0", "lora1", "lora2", "lora3"}
    assert summary["avg_latency_per_token_s"] > 0 and summary["mean_ttft_ms"] > 0
    assert record["args"]["task"] == "vqa" and "command" in record
    # the engine's step totals over the run, read from /metrics: every output token after the
    # first is one decode row of some step, and every step is counted under one mode
    stats = record["engine_stats"]
    decode_rows = sum(r["output_tokens"] - 1 for r in requests)
    assert sum(stats["step_tokens"].values()) >= decode_rows + len(requests)
    assert sum(stats["steps"].values()) >= max(r["output_tokens"] for r in requests)
    assert all(stats["mean_step_ms"][m] > 0 for m, n in stats["steps"].items() if n)


def test_vat_replay_on_the_in_process_engine(tmp_path):
    out = tmp_path / "vat.jsonl"
    engine_args = (
        "--model-setting tiny --device cpu --num-adapter 4 --num-token 8192 --lora-backend torch"
    )
    run_exp.main(replay_args(out, "--task", "vat_images", "--debug", "--engine_args", engine_args))
    requests, record = read(out)
    assert len(requests) == 8  # --debug
    assert all(r["success"] and r["num_images"] == 6 and r["output_tokens"] == 1 for r in requests)
    assert record["summary"]["completed"] == 8
    stats = record["engine_stats"]  # from the engine itself; a prefill computes >= 1 token
    assert sum(stats["steps"].values()) >= 1 and sum(stats["step_tokens"].values()) >= 8
