"""Replay metrics against hand-computed figures (vLLM's benchmark_serving definitions, VaLoRA's
latency per token and 6 s SLO attainment)."""

from __future__ import annotations

import json
import math

import pytest

from replay.metrics import (
    RequestResult,
    engine_stats_delta,
    format_engine_stats,
    format_summary,
    read_jsonl,
    summarize,
    write_jsonl,
)

DURATION_S = 10.0


def _result(request_id, task, send_s, chunk_s, end_s, prompt, output, images, success=True):
    return RequestResult(
        request_id=request_id,
        adapter="a1",
        task=task,
        scheduled_s=send_s,
        send_s=send_s,
        chunk_s=chunk_s,
        end_s=end_s,
        prompt_tokens=prompt,
        output_tokens=output,
        num_images=images,
        success=success,
        error="" if success else "HTTP 500",
    )


def _workload() -> list[RequestResult]:
    """A: ttft 0.5, e2e 0.8, itls [0.1, 0.2], tpot (0.8-0.5)/2 = 0.15.
    B: ttft 1.0, e2e 1.5, itls [0.5], tpot 0.5/1 = 0.5.
    C: one output token (VaLoRA's task-head emulation): ttft 7.0, e2e 7.0, no itl, no tpot.
    D: failed."""
    return [
        _result("A", "vqa", 0.0, [0.5, 0.6, 0.8], 0.8, prompt=100, output=3, images=1),
        _result("B", "vqa", 1.0, [2.0, 2.5], 2.5, prompt=200, output=2, images=1),
        _result("C", "vat", 2.0, [9.0], 9.0, prompt=300, output=1, images=6),
        _result("D", "vqa", 3.0, [], None, prompt=0, output=0, images=1, success=False),
    ]


def test_request_properties():
    a, b, c, d = _workload()
    assert a.ttft == pytest.approx(0.5) and a.e2e == pytest.approx(0.8)
    assert a.itls == pytest.approx([0.1, 0.2])
    assert a.tpot == pytest.approx(0.15)
    assert b.tpot == pytest.approx(0.5)
    assert c.tpot is None and c.itls == []
    assert d.ttft is None and d.e2e is None and d.tpot is None


def test_counts_and_throughputs():
    s = summarize(_workload(), DURATION_S)
    assert (s["completed"], s["failed"]) == (3, 1)
    assert s["total_input_tokens"] == 600 and s["total_output_tokens"] == 6
    assert s["request_throughput"] == pytest.approx(3 / 10)
    assert s["output_throughput"] == pytest.approx(6 / 10)
    assert s["total_token_throughput"] == pytest.approx(606 / 10)
    assert s["request_goodput"] is None  # no SLOs given


def test_ttft_distribution():
    # TTFT ms over completed requests: [500, 1000, 7000].
    # Linear percentile of n=3 sorted values: rank = p/100 * (n-1).
    #   p50: rank 1.0  -> 1000
    #   p90: rank 1.8  -> 1000 + 0.8 * (7000-1000) = 5800
    #   p99: rank 1.98 -> 1000 + 0.98 * 6000 = 6880
    s = summarize(_workload(), DURATION_S)
    mean = (500 + 1000 + 7000) / 3
    std = math.sqrt(((500 - mean) ** 2 + (1000 - mean) ** 2 + (7000 - mean) ** 2) / 3)
    assert s["mean_ttft_ms"] == pytest.approx(mean)
    assert s["median_ttft_ms"] == pytest.approx(1000)
    assert s["std_ttft_ms"] == pytest.approx(std)  # population std, as numpy / vLLM
    assert s["p50_ttft_ms"] == pytest.approx(1000)
    assert s["p90_ttft_ms"] == pytest.approx(5800)
    assert s["p99_ttft_ms"] == pytest.approx(6880)


def test_tpot_only_multi_token_requests():
    # TPOT ms over A and B only (C has one output token): [150, 500].
    # p99: rank 0.99 -> 150 + 0.99 * 350 = 496.5
    s = summarize(_workload(), DURATION_S)
    assert s["mean_tpot_ms"] == pytest.approx(325)
    assert s["median_tpot_ms"] == pytest.approx(325)
    assert s["std_tpot_ms"] == pytest.approx(175)
    assert s["p99_tpot_ms"] == pytest.approx(496.5)


def test_itl_pooled_and_e2e():
    # ITL ms pooled over A and B: [100, 200, 500]; p99: rank 1.98 -> 200 + 0.98 * 300 = 494.
    # E2E ms: [800, 1500, 7000]; p99: rank 1.98 -> 1500 + 0.98 * 5500 = 6890.
    s = summarize(_workload(), DURATION_S)
    assert s["mean_itl_ms"] == pytest.approx(800 / 3)
    assert s["median_itl_ms"] == pytest.approx(200)
    assert s["p99_itl_ms"] == pytest.approx(494)
    assert s["mean_e2el_ms"] == pytest.approx(3100)
    assert s["median_e2el_ms"] == pytest.approx(1500)
    assert s["p99_e2el_ms"] == pytest.approx(6890)
    assert s["avg_latency_s"] == pytest.approx(3.1)


def test_goodput():
    workload = _workload()
    # A meets all; B misses TPOT only (500 > 200); C's TPOT counts as 0 -> meets all. 2 / 10 s.
    slos = {"ttft": 7500, "tpot": 200, "e2el": 8000}
    assert summarize(workload, DURATION_S, slos=slos)["request_goodput"] == pytest.approx(0.2)
    # TPOT bound 0: only the one-token request C meets it.
    assert summarize(workload, DURATION_S, slos={"tpot": 0})["request_goodput"] == pytest.approx(
        0.1
    )
    # Bounds are inclusive: B's TTFT is exactly 1000 ms.
    assert summarize(workload, DURATION_S, slos={"ttft": 1000})["request_goodput"] == pytest.approx(
        0.2
    )
    with pytest.raises(ValueError, match="unknown SLO"):
        summarize(workload, DURATION_S, slos={"latency": 1.0})


def test_slo_attainment_counts_failures_as_missed():
    # TTFT <= 6 s: A, B yes; C (7 s) no; D failed -> missed. 2 / 4.
    workload = _workload()
    assert summarize(workload, DURATION_S)["slo_attainment"] == pytest.approx(0.5)
    assert summarize(workload, DURATION_S, slo_ttft_s=7.0)["slo_attainment"] == pytest.approx(0.75)


def test_avg_latency_per_token():
    # Mean E2E 3.1 s; tokens (prompt + output) A 103, B 202, C 301 -> mean 202.
    s = summarize(_workload(), DURATION_S)
    assert s["avg_latency_per_token_s"] == pytest.approx(3.1 / 202)


def test_avg_latency_per_token_image_tokens():
    # VaLoRA's convention: + 256 per image: A 103+256, B 202+256, C 301+6*256 -> mean 2654/3.
    s = summarize(_workload(), DURATION_S, image_tokens=256)
    assert s["avg_latency_per_token_s"] == pytest.approx(3.1 / (2654 / 3))


def test_by_task_only_with_several_tasks():
    s = summarize(_workload(), DURATION_S)
    # vqa: A and B complete (D failed): mean TTFT 750 ms; 1.15 s / 152.5 tokens.
    assert s["by_task"]["vqa"] == pytest.approx(
        {"completed": 2, "mean_ttft_ms": 750, "avg_latency_per_token_s": 1.15 / 152.5}
    )
    assert s["by_task"]["vat"] == pytest.approx(
        {"completed": 1, "mean_ttft_ms": 7000, "avg_latency_per_token_s": 7.0 / 301}
    )
    assert "by_task" not in summarize(_workload()[:2], DURATION_S)


def test_other_percentiles_named_like_vllm():
    s = summarize(_workload(), DURATION_S, percentiles=(99.9,))
    assert s["p99.9_ttft_ms"] == pytest.approx(1000 + 0.998 * 6000)
    assert "p99_ttft_ms" not in s


@pytest.mark.parametrize("results", [[], [_workload()[3]]], ids=["empty", "all_failed"])
def test_nothing_completed_gives_none(results):
    s = summarize(results, DURATION_S, slos={"ttft": 100})
    assert s["completed"] == 0 and s["request_throughput"] == 0.0
    assert s["request_goodput"] == 0.0
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p90", "p99"):
            assert s[f"{stat}_{name}_ms"] is None
    assert s["avg_latency_s"] is None and s["avg_latency_per_token_s"] is None
    assert s["slo_attainment"] == (0.0 if results else None)
    assert "n/a" in format_summary(s, "empty")


def test_jsonl_round_trip(tmp_path):
    workload = _workload()
    summary = summarize(workload, DURATION_S, slos={"ttft": 1000})
    header = {"command": "python benchmarks/run_exp.py", "gpu": "cpu"}
    path = tmp_path / "run.jsonl"
    write_jsonl(path, workload, summary, header)
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[0])["tpot"] == pytest.approx(0.15)  # derived metrics are written
    results, record = read_jsonl(path)
    assert results == workload
    assert record == {"summary": summary, **header}


def test_format_summary_key_lines():
    text = format_summary(summarize(_workload(), DURATION_S, slos={"ttft": 1000}), "valora r=2")
    lines = text.splitlines()
    assert "valora r=2" in lines[0] and len(lines[0]) == 50
    for expected in (
        "Successful requests:                     3",
        "Failed requests:                         1",
        "Benchmark duration (s):                  10.00",
        "Request throughput (req/s):              0.30",
        "Request goodput (req/s):                 0.20",
        "Output token throughput (tok/s):         0.60",
        "Total Token throughput (tok/s):          60.60",
        "Mean TTFT (ms):                          2833.33",
        "P99 TTFT (ms):                           6880.00",
        "Median TPOT (ms):                        325.00",
        "P99 ITL (ms):                            494.00",
        "Mean E2EL (ms):                          3100.00",
        "SLO attainment (TTFT <= 6 s) (%):        50.00",
        "Avg latency per token (s):               0.01535",
    ):
        assert expected in lines, expected
    assert "Time per Output Token (excl. 1st token)" in text


def test_engine_stats_delta_and_line():
    before = {
        "steps": {"unmerged": 10, "merged": 0},
        "step_seconds": {"unmerged": 0.5, "merged": 0.0},
        "step_tokens": {"unmerged": 100, "merged": 0},
        "switches": 1,
        "switch_seconds": 0.01,
    }
    after = {
        "steps": {"unmerged": 14, "merged": 2},
        "step_seconds": {"unmerged": 0.7, "merged": 0.06},
        "step_tokens": {"unmerged": 120, "merged": 8},
        "switches": 3,
        "switch_seconds": 0.05,
    }
    delta = engine_stats_delta(before, after)
    assert delta["steps"] == {"unmerged": 4, "merged": 2}
    assert delta["step_tokens"] == {"unmerged": 20, "merged": 8}
    assert delta["mean_step_ms"] == pytest.approx({"unmerged": 50.0, "merged": 30.0})
    assert delta["switches"] == 2 and delta["mean_switch_ms"] == pytest.approx(20.0)
    line = format_engine_stats(delta)
    assert "unmerged 4 steps (50.0 ms)" in line and "2 switches (20.0 ms)" in line
    assert engine_stats_delta(None, after) is None
    assert "no step totals" in format_engine_stats(None)


def test_engine_stats_from_the_prometheus_text():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily

    from replay.client import stats_from_prometheus

    class Fake:
        def collect(self):
            steps = CounterMetricFamily("valora_steps", "d", labels=["mode"])
            steps.add_metric(["unmerged"], 7)
            steps.add_metric(["mixture"], 2)
            yield steps
            yield CounterMetricFamily("valora_mode_switches", "d", value=3)
            yield CounterMetricFamily("valora_switch_seconds", "d", value=0.25)

    registry = CollectorRegistry()
    registry.register(Fake())
    stats = stats_from_prometheus(generate_latest(registry).decode())
    assert stats["steps"] == {"unmerged": 7, "mixture": 2}
    assert stats["switches"] == 3 and stats["switch_seconds"] == 0.25
