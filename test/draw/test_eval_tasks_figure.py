"""draw/eval_tasks.py draws from a results file of the shape ``python -m valora.eval`` writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[2]
TASKS = {"vqa": "exact", "caption": "bleu", "ocr": "edit", "action": "exact"}


def row(task: str, adapter: str, score: float, mode: str = "generate") -> dict:
    metric = "classify" if mode == "head" else TASKS[task]
    scores = {"exact": 0.5, "bleu": 30.0, "edit": 0.7}
    return {
        "task": task,
        "adapter": adapter,
        "mode": mode,
        "metric": metric,
        "score": score,
        **scores,
        "n": 50,
    }


def results_record() -> dict:
    rows = [row(t, "base", 12.0 if m == "bleu" else 0.2) for t, m in TASKS.items()]
    rows += [
        row("vqa", "vqa-lora", 0.81),
        row("caption", "caption-lora", 41.5),
        row("ocr", "ocr-lora", 0.93),
        row("action", "action-head", 0.97, mode="head"),
        row("vqa", "mixed", 0.6),
        row("caption", "mixed", 35.0),
    ]
    setup = {"data": "tasks/", "split": "val", "server": "http://127.0.0.1:8000"}
    return {"command": "python -m valora.eval ...", "versions": {}, "setup": setup, "results": rows}


def test_eval_tasks_figure_draws_from_a_results_file(tmp_path):
    results = tmp_path / "eval_val.json"
    results.write_text(json.dumps(results_record()))
    out = tmp_path / "figs" / "eval_tasks"
    subprocess.run(
        [sys.executable, "draw/eval_tasks.py", str(results), "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert out.with_suffix(".pdf").stat().st_size > 1_000
