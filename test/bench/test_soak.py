"""The soak script runs end to end (a few seconds of its mixed traffic) and reports a pass: the
full several-minute soak is run by hand (benchmarks/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_passes_with_nothing_leaked(tmp_path):
    out = tmp_path / "soak.json"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/soak.py",
            "--duration",
            "6",
            "--concurrency",
            "6",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["passed"] and result["health"] == 200 and not result["failures"]
    assert not any(result["after"].values())
    assert result["counts"]["good"] > 0 and result["counts"]["bad"] > 0
