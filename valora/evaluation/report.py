"""The results file and the printed table of an evaluation run."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from valora.evaluation.evaluate import EvalResult

PACKAGES = ("valora", "torch", "transformers", "sacrebleu", "rapidfuzz", "openai", "httpx")


def versions() -> dict[str, str]:
    """Python's and the installed packages' versions ("-" where one is missing)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def results_record(
    result: EvalResult, command: str, setup: dict | None = None, predictions: bool = True
) -> dict:
    """{"command", "versions", "setup", "results": rows, "predictions" (when asked)}."""
    record = {
        "command": command,
        "versions": versions(),
        "setup": setup or {},
        "results": result.rows,
    }
    if predictions:
        record["predictions"] = result.predictions
    return record


def write_results(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def format_score(metric: str, value: float) -> str:
    """BLEU on 0-100 with one decimal, the 0-1 metrics with three."""
    return f"{value:.1f}" if metric == "bleu" else f"{value:.3f}"


def format_table(rows: list[dict]) -> str:
    """Tasks down, adapters across; each cell the task's primary metric (``-``: not run)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    adapters = list(dict.fromkeys(r["adapter"] for r in rows))
    cells = {(r["task"], r["adapter"]): r for r in rows}
    header = ["task", "metric", "n", *adapters]
    lines = [header]
    for task in tasks:
        entries = [cells.get((task, a)) for a in adapters]
        first = next(e for e in entries if e is not None)
        metrics = sorted({e["metric"] for e in entries if e is not None})
        scores = [format_score(e["metric"], e["score"]) if e else "-" for e in entries]
        lines.append([task, "/".join(metrics), str(first["n"]), *scores])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    )
