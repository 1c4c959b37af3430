"""draw/vat.py draws from a bench_vat.py result file of the shape the benchmark writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[2]


def latency(mean_ms: float) -> dict:
    return {"mean": mean_ms, "p50": mean_ms, "p90": 1.2 * mean_ms, "min": mean_ms, "max": mean_ms}


def bench_record() -> dict:
    modes = [
        {
            "mode": "head" if k == 0 else f"generate_{k}",
            "max_tokens": k,
            "batch1_latency_ms": latency(60.0 + 15.0 * k),
            "batch": 24,
            "batch_total_s": 0.5 + 0.1 * k,
            "batch_mean_latency_ms": 300.0 + 50.0 * k,
        }
        for k in (0, 1, 4, 8)
    ]
    rates = [
        {
            "offered_rate": rate,
            "requests": int(8 * rate),
            "duration_s": 8.0,
            "span_s": 8.0,
            "achieved_req_s": min(rate, 12.0),
            "achieved_frames_s": 8 * min(rate, 12.0),
            "latency_ms": latency(70.0 if rate < 12 else 2000.0),
        }
        for rate in (1, 2, 4, 8, 16, 32)
    ]
    clips = {
        "num_clips": 24,
        "frames": 8,
        "size": [336, 448],
        "prompt_tokens_per_clip": {"mean": 790.0, "min": 790, "max": 790},
        "preprocess_ms_per_clip": 12.0,
    }
    return {
        "benchmark": "vat",
        "gpu": "NVIDIA H100 80GB HBM3",
        "model_setting": "qwen2-vl-7b",
        "clips": clips,
        "head_vs_generate": modes,
        "throughput": rates,
    }


def test_vat_figure_draws_from_a_bench_vat_file(tmp_path):
    results = tmp_path / "bench_vat_h100.json"
    results.write_text(json.dumps(bench_record()))
    out = tmp_path / "figs" / "vat_h100"
    subprocess.run(
        [sys.executable, "draw/vat.py", str(results), "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert out.with_suffix(".pdf").stat().st_size > 1_000
