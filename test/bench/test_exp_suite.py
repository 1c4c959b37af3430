"""The named suites' contents, and one suite run end to end (a tiny server per configuration,
its result file)."""

from __future__ import annotations

import json
import os
import sys

import pytest

import exp_suite

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def test_fig14_is_rates_by_policies_by_tasks_with_one_server_per_policy():
    runs = exp_suite.SUITES["fig14"]
    assert len(runs) == 5 * 4 * 2
    assert {r["client"]["req_rate"] for r in runs} == {2, 4, 6, 10, 16}
    assert {r["client"]["skewness"] for r in runs} == {0.8}
    groups = exp_suite._server_groups(runs)
    assert sorted(g[0]["policy"] for g in groups) == sorted(exp_suite.POLICIES)
    assert all(len(group) == 10 for _, group in groups)


def test_sweeps_cover_skewness_adapter_counts_to_1000_and_rank_mixes():
    skews = {r["client"]["skewness"] for r in exp_suite.SUITES["skewness"]}
    assert skews == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}
    counts = {r["server"]["num-adapter"] for r in exp_suite.SUITES["adapters"]}
    assert max(counts) == 1000 and min(counts) == 1
    ranks = {r["server"]["dummy-ranks"] for r in exp_suite.SUITES["rank-mix"]}
    assert "8 16 32 64" in ranks
    assert exp_suite._flags({"dummy-ranks": "8 16", "policy": "valora"}) == [
        "--dummy-ranks",
        "8",
        "16",
        "--policy",
        "valora",
    ]


def test_a_suite_run_starts_its_server_and_writes_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    exp_suite.run_suite(
        "fig14",
        str(tmp_path),
        [
            "--model-setting",
            "tiny",
            "--device",
            "cpu",
            "--num-token",
            "8192",
            "--lora-backend",
            "torch",
        ],
        ["--duration", "2", "--max_output_tokens", "4"],
        policies=["punica"],
        match="_vat_2",
        warmup_s=1,
    )
    lines = (tmp_path / "punica_vat_2.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["label"] == "punica_vat_2" and record["summary"]["failed"] == 0
    assert record["summary"]["completed"] == len(lines) - 1 > 0
