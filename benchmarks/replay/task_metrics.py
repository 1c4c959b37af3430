"""Each task's own service figures in a replay (``summary["tasks"]``), e.g. vat (classify) next
to vqa (generate) in one mixed run.

Per task: requests, completed, failed, ``request_throughput`` (completed / the whole run's wall
duration), ``video_frame_throughput`` (frames of completed requests' clips per second; None
without clips), the latency distribution ``mean_/median_/std_/pXX_latency_ms`` over completed
requests (latency = E2EL, send -> the answer or the last byte, for every kind of request), and
``mean_ttft_ms`` (None for classify requests: they stream nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from replay.stats import distribution, rate

if TYPE_CHECKING:
    from replay.metrics import RequestResult


def answer_s(result: RequestResult) -> float | None:
    """When the first output reached the client, from the send: TTFT, or for a classify request
    (nothing streamed) its end-to-end latency; None without either."""
    if result.ttft is not None:
        return result.ttft
    return result.e2e if result.classify else None


def task_summaries(
    results: Sequence[RequestResult], duration_s: float, percentiles: Sequence[float] = (50, 90, 99)
) -> dict[str, dict]:
    """{task: its figures (module docstring)}, tasks in sorted order."""
    return {
        task: _task_summary([r for r in results if r.task == task], duration_s, percentiles)
        for task in sorted({r.task for r in results})
    }


def _task_summary(
    results: list[RequestResult], duration_s: float, percentiles: Sequence[float]
) -> dict:
    completed = [r for r in results if r.success]
    ttfts = [r.ttft for r in completed if r.ttft is not None]
    frames = sum(r.video_frames for r in completed)
    return {
        "requests": len(results),
        "completed": len(completed),
        "failed": len(results) - len(completed),
        "classify": any(r.classify for r in results),
        "request_throughput": rate(len(completed), duration_s),
        "video_frame_throughput": rate(frames, duration_s) if frames else None,
        "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in completed]))
        if completed
        else None,
        **distribution("latency", [r.e2e for r in completed], percentiles),
        "mean_ttft_ms": float(np.mean(ttfts)) * 1000.0 if ttfts else None,
    }


def task_lines(tasks: dict[str, dict]) -> list[str]:
    """The summary table's per-task block: one row per task (empty for no tasks)."""
    if not tasks:
        return []
    percentiles = _percentile_keys(next(iter(tasks.values())))
    header = ["task", "done", "fail", "req/s", "mean ms", *(f"{w} ms" for w, _ in percentiles)]
    lines = [f"{' Per task (latency: send -> answer) ':-^50}", _row(header)]
    for task, row in tasks.items():
        cells = [task, row["completed"], row["failed"], row["request_throughput"]]
        cells += [row["mean_latency_ms"], *(row[key] for _, key in percentiles)]
        lines.append(_row(cells))
    return lines


def _percentile_keys(row: dict) -> list[tuple[str, str]]:
    """(column word ``p90``, key ``p90_latency_ms``) for the percentiles a row holds."""
    keys = [k for k in row if k.startswith("p") and k.endswith("_latency_ms")]
    return [(k.removesuffix("_latency_ms"), k) for k in keys]


def _row(cells: list) -> str:
    def text(value) -> str:
        if value is None:
            return "n/a"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    return " ".join(f"{text(c):>9}" for c in cells).rstrip()
