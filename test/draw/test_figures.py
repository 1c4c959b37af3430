"""Figure scripts run on a small result file of the shape the benchmarks write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[2]


def test_fig17_draws_from_a_kernel_benchmark_file(tmp_path):
    rows = [{"benchmark": "lora_op_cost", "gpu": "GPU", "dtype": "bfloat16", "ranks": "mixed"}]
    for target, n in (("q/o", 3584), ("k/v", 512)):
        for phase, sizes in (("decode", (1, 8, 64)), ("prefill", (256, 1024))):
            for tokens in sizes:
                for backend in ("atmm", "sgmv", "mbgmv", "einsum", "torch"):
                    rows.append(
                        {
                            "target": target,
                            "N": n,
                            "K": 3584,
                            "phase": phase,
                            "tokens": tokens,
                            "backend": backend,
                            "ms": 0.01 * tokens,
                            "floor_ms": 0.004 * tokens,
                        }
                    )
    results = tmp_path / "kernels.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "fig17.png"
    subprocess.run(
        [sys.executable, str(ROOT / "draw/fig17.py"), str(results), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    assert out.stat().st_size > 10_000


def write_run(directory: Path, label: str, args: dict, latency_per_token: float) -> None:
    """A run_exp.py result file: request lines, then the summary record."""
    requests = [
        {"request_id": f"r{i}", "ttft": 0.1 * (i + 1), "e2e": 0.5 * (i + 1)} for i in range(5)
    ]
    record = {
        "summary": {"avg_latency_per_token_s": latency_per_token},
        "label": label,
        "args": args,
    }
    lines = [json.dumps(r) for r in [*requests, record]]
    (directory / f"{label}.jsonl").write_text("\n".join(lines) + "\n")


def test_replay_figures_draw_from_suite_result_files(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, policy in enumerate(("valora", "slora", "punica", "dlora")):
        for task in ("vqa", "vat"):
            for rate in (2, 6):
                args = {"task": task, "req_rate": rate, "skewness": 0.8, "num_adapters": 16}
                write_run(runs, f"{policy}_{task}_{rate}", args, 1e-3 * (i + 1) * rate)
    draws = [
        ["draw/fig14.py", str(runs), "--out", str(tmp_path / "fig14")],
        ["draw/sweeps.py", "skewness", str(runs), "--out", str(tmp_path / "skew")],
        ["draw/latency_cdf.py", str(runs), "--match", "_vqa_6", "--out", str(tmp_path / "cdf")],
    ]
    for cmd in draws:
        subprocess.run([sys.executable, *cmd], check=True, cwd=ROOT, capture_output=True, text=True)
        out = Path(cmd[cmd.index("--out") + 1])
        assert out.with_suffix(".png").stat().st_size > 10_000
        assert out.with_suffix(".pdf").stat().st_size > 1_000
    assert (
        "vqa valora/slora latency per token: 2: 0.50x, 6: 0.50x"
        in subprocess.run(
            [sys.executable, *draws[0]], check=True, cwd=ROOT, capture_output=True, text=True
        ).stdout
    )
