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
                    rows.append({"target": target, "N": n, "K": 3584, "phase": phase,
                                 "tokens": tokens, "backend": backend, "ms": 0.01 * tokens,
                                 "floor_ms": 0.004 * tokens})  # fmt: skip
    results = tmp_path / "kernels.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "fig17.png"
    subprocess.run([sys.executable, str(ROOT / "draw/fig17.py"), str(results), "--out", str(out)],
                   check=True, cwd=ROOT)  # fmt: skip
    assert out.stat().st_size > 10_000
