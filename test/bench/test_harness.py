"""benchmarks/harness.py: what the benchmark scripts share imports on the CPU, its timer is the
project's one GPU timer, and provenance records the run; the scripts import it, not each other."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import harness
import pytest

from kernel_tables import timing

BENCHMARKS = Path(harness.__file__).parent
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "harness")


def test_harness_exports_the_one_timer():
    assert all(hasattr(harness, name) for name in harness.__all__)
    assert harness.gpu_time is timing.gpu_time


def test_provenance_records_gpu_versions_commit_and_command():
    record = harness.provenance(["benchmarks/x.py", "--engine_args", "--a 1"])
    assert set(record) == {"gpu", "versions", "git_commit", "command"}
    assert shlex.split(record["command"]) == [
        sys.executable,
        "benchmarks/x.py",
        "--engine_args",
        "--a 1",
    ]
    assert {"python", "torch", "triton", "transformers"} <= set(record["versions"])
    commit = record["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)


def test_wall_time_returns_the_result_and_seconds():
    result, seconds = harness.wall_time(lambda: 42)
    assert result == 42 and 0 <= seconds < 5


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_import_no_other_script(script):
    """Shared helpers live in harness.py; a script imports no other benchmark script."""
    tree = ast.parse((BENCHMARKS / f"{script}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & (set(SCRIPTS) - {script})
