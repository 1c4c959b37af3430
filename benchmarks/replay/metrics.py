"""Per-request timings of a replayed workload and their summary.

The serving metrics follow vLLM's ``benchmark_serving.py`` exactly, so the figures can be set
next to vLLM's:

- TTFT: send -> first streamed chunk carrying output; E2EL: send -> last byte.
- TPOT: (E2EL - TTFT) / (output_tokens - 1), only over requests with more than one output token.
- ITL: the gaps between successive chunks, all requests' gaps pooled into one set.
- Throughputs divide by the benchmark's wall duration; only completed requests count.
- Goodput (vLLM's ``--goodput``): completed requests per second meeting *every* given SLO (ms),
  TPOT counted as 0 for outputs of one token or fewer.
- Latencies in ms as mean / median / std (population) / percentiles, numpy's linear
  interpolation. An empty set gives None where vLLM would print 0.

VaLoRA's own (its ``run_exp.py``): ``slo_attainment`` is the share of *all* requests (a failed
one counts as missed) whose TTFT is at most 6 s; ``avg_latency_per_token_s`` is the mean E2E
over the mean (prompt + output) tokens of the completed requests, the y-axis of its Fig. 14.
VaLoRA added 256 tokens per image to that denominator (Qwen-VL has 256 visual tokens per image);
here ``prompt_tokens`` comes from the server's usage and already counts the image tokens it
placed, so nothing is added unless ``image_tokens`` is given (then ``image_tokens * num_images``
per request, VaLoRA's exact convention).

Classify requests (a task head answers in one prefill, ``classify``): no chunks and no output
tokens, so no TTFT / TPOT / ITL; their latency is E2EL (send -> the answer), which also stands
in for TTFT in the SLO attainment and goodput. ``summary["tasks"]`` has each task's own
throughput and latency distribution (``replay.task_metrics``).

Times in a ``RequestResult`` are seconds from the start of the replay, on the client's clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from replay.stats import distribution as _distribution
from replay.stats import percentile_word as _percentile_word
from replay.stats import rate as _rate
from replay.task_metrics import answer_s, task_lines, task_summaries

SLO_NAMES = ("ttft", "tpot", "e2el")
# Sections of the printed table: (metric key, label, header), vLLM's order.
_SECTIONS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
)


@dataclass
class RequestResult:
    request_id: str
    adapter: str | None
    task: str  # "vqa" | "vat"
    scheduled_s: float  # arrival time in the workload
    send_s: float  # when the request was sent
    chunk_s: list[float]  # arrival of each streamed chunk carrying output, ascending
    end_s: float | None  # last byte / completion; None if the request failed
    prompt_tokens: int  # the server's usage (0 if unknown); includes image tokens
    output_tokens: int  # the server's usage, or the counted chunks without usage
    num_images: int
    success: bool
    error: str = ""
    classify: bool = False  # a task-head request: no output tokens, no chunks (no TTFT / TPOT)
    label: str | None = None  # a classify request's answer
    video_frames: int = 0  # frames of the request's video clip (0: none)

    @property
    def ttft(self) -> float | None:
        return self.chunk_s[0] - self.send_s if self.chunk_s else None

    @property
    def e2e(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.send_s

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_s, self.chunk_s[1:])]

    @property
    def tpot(self) -> float | None:
        ttft, e2e = self.ttft, self.e2e
        if self.output_tokens <= 1 or ttft is None or e2e is None:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        """All fields plus the derived ``ttft``, ``e2e``, ``itls``, ``tpot`` (seconds)."""
        derived = {"ttft": self.ttft, "e2e": self.e2e, "itls": self.itls, "tpot": self.tpot}
        return {**asdict(self), **derived}

    @classmethod
    def from_json(cls, record: dict) -> RequestResult:
        """Inverse of ``to_json``; the derived keys are recomputed, not read."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def _meets_slos(result: RequestResult, slos_ms: dict[str, float]) -> bool:
    """vLLM's goodput test. A request without chunks has no TTFT, so it cannot meet a TTFT SLO
    (a classify request's answer stands in for its first token)."""
    tpot = 0.0 if result.output_tokens <= 1 else result.tpot
    observed_s = {"ttft": answer_s(result), "tpot": tpot, "e2el": result.e2e}
    for name, bound_ms in slos_ms.items():
        value_s = observed_s[name]
        if value_s is None or value_s > bound_ms / 1000.0:
            return False
    return True


def _slo_attainment(results: Sequence[RequestResult], slo_ttft_s: float) -> float | None:
    if not results:
        return None
    answers = [answer_s(r) if r.success else None for r in results]
    return sum(a is not None and a <= slo_ttft_s for a in answers) / len(results)


def _latency_per_token(completed: list[RequestResult], image_tokens: int | None) -> float | None:
    """Mean E2E / mean tokens per request (VaLoRA), or None; ``image_tokens`` per image adds to
    the tokens."""
    if not completed:
        return None
    per_image = image_tokens or 0
    tokens = [r.prompt_tokens + r.output_tokens + per_image * r.num_images for r in completed]
    mean_tokens = float(np.mean(tokens))
    if mean_tokens <= 0:
        return None
    return float(np.mean([r.e2e for r in completed])) / mean_tokens


def _by_task(results: Sequence[RequestResult], image_tokens: int | None) -> dict[str, dict]:
    breakdown = {}
    for task in sorted({r.task for r in results}):
        completed = [r for r in results if r.task == task and r.success]
        ttfts = [r.ttft for r in completed if r.ttft is not None]
        breakdown[task] = {
            "completed": len(completed),
            "mean_ttft_ms": float(np.mean(ttfts)) * 1000.0 if ttfts else None,
            "avg_latency_per_token_s": _latency_per_token(completed, image_tokens),
        }
    return breakdown


def _check_slos(slos: dict[str, float] | None) -> None:
    unknown = set(slos or {}) - set(SLO_NAMES)
    if unknown:
        raise ValueError(f"unknown SLO {sorted(unknown)}: choose from {SLO_NAMES}")


def summarize(
    results: Sequence[RequestResult],
    duration_s: float,
    *,
    slos: dict[str, float] | None = None,
    slo_ttft_s: float = 6.0,
    image_tokens: int | None = None,
    percentiles: Sequence[float] = (50, 90, 99),
) -> dict:
    """vLLM's serving metrics plus VaLoRA's (module docstring). ``duration_s`` is the benchmark's
    wall time; ``slos`` in ms keyed by ``ttft`` / ``tpot`` / ``e2el`` (goodput; None without);
    rates are None for a non-positive duration."""
    _check_slos(slos)
    completed = [r for r in results if r.success]
    total_input = sum(r.prompt_tokens for r in completed)
    total_output = sum(r.output_tokens for r in completed)
    good = sum(_meets_slos(r, slos) for r in completed) if slos else None
    summary = {
        "completed": len(completed),
        "failed": len(results) - len(completed),
        "duration_s": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": _rate(len(completed), duration_s),
        "request_goodput": None if good is None else _rate(good, duration_s),
        "goodput_slos_ms": dict(slos) if slos else None,
        "output_throughput": _rate(total_output, duration_s),
        "total_token_throughput": _rate(total_input + total_output, duration_s),
        "percentiles": list(percentiles),
    }
    # A completed request without chunks (no streaming) has no TTFT / ITL / TPOT to report.
    samples = {
        "ttft": [r.ttft for r in completed if r.ttft is not None],
        "tpot": [r.tpot for r in completed if r.tpot is not None],
        "itl": [gap for r in completed for gap in r.itls],
        "e2el": [r.e2e for r in completed],
    }
    for name, values in samples.items():
        summary.update(_distribution(name, values, percentiles))
    summary["slo_ttft_s"] = slo_ttft_s
    summary["slo_attainment"] = _slo_attainment(results, slo_ttft_s)
    summary["avg_latency_s"] = float(np.mean(samples["e2el"])) if completed else None
    summary["avg_latency_per_token_s"] = _latency_per_token(completed, image_tokens)
    summary["image_tokens"] = image_tokens
    if len({r.task for r in results}) > 1:
        summary["by_task"] = _by_task(results, image_tokens)
    summary["tasks"] = task_summaries(results, duration_s, percentiles)
    return summary


def _line(label: str, value: float | int | None, digits: int = 2) -> str:
    """One fixed-width row, vLLM's ``{:<40} {:<10}``; None prints as ``n/a``."""
    if value is None:
        text = "n/a"
    elif isinstance(value, int):
        text = str(value)
    else:
        text = f"{value:.{digits}f}"
    return f"{label:<40} {text:<10}"


def _section_lines(summary: dict, key: str, label: str, header: str) -> list[str]:
    lines = [f"{header:-^50}"]
    lines.append(_line(f"Mean {label} (ms):", summary.get(f"mean_{key}_ms")))
    lines.append(_line(f"Median {label} (ms):", summary.get(f"median_{key}_ms")))
    for p in summary.get("percentiles", []):
        word = _percentile_word(p)
        lines.append(_line(f"P{word} {label} (ms):", summary.get(f"p{word}_{key}_ms")))
    return lines


def _valora_lines(summary: dict) -> list[str]:
    attainment = summary.get("slo_attainment")
    percent = None if attainment is None else attainment * 100.0
    lines = [f"{' VaLoRA ':-^50}"]
    lines.append(_line(f"SLO attainment (TTFT <= {summary['slo_ttft_s']:g} s) (%):", percent))
    lines.append(_line("Avg latency (s):", summary.get("avg_latency_s"), 3))
    lines.append(_line("Avg latency per token (s):", summary.get("avg_latency_per_token_s"), 5))
    for task, row in (summary.get("by_task") or {}).items():
        per_token = row["avg_latency_per_token_s"]
        lines.append(_line(f"  {task}: completed", row["completed"]))
        lines.append(_line(f"  {task}: mean TTFT (ms)", row["mean_ttft_ms"]))
        lines.append(_line(f"  {task}: avg latency per token (s)", per_token, 5))
    return lines


def format_summary(summary: dict, title: str = "Serving Benchmark Result") -> str:
    """A fixed-width table like vLLM's "Serving Benchmark Result" block."""
    lines = [f"{' ' + title + ' ':=^50}"]
    lines.append(_line("Successful requests:", summary["completed"]))
    lines.append(_line("Failed requests:", summary["failed"]))
    lines.append(_line("Benchmark duration (s):", float(summary["duration_s"])))
    lines.append(_line("Total input tokens:", summary["total_input_tokens"]))
    lines.append(_line("Total generated tokens:", summary["total_output_tokens"]))
    lines.append(_line("Request throughput (req/s):", summary["request_throughput"]))
    if summary.get("goodput_slos_ms"):
        lines.append(_line("Request goodput (req/s):", summary["request_goodput"]))
    lines.append(_line("Output token throughput (tok/s):", summary["output_throughput"]))
    lines.append(_line("Total Token throughput (tok/s):", summary["total_token_throughput"]))
    for key, label, header in _SECTIONS:
        lines += _section_lines(summary, key, label, header)
    lines += _valora_lines(summary)
    lines += task_lines(summary.get("tasks") or {})
    lines.append("=" * 50)
    return "\n".join(line.rstrip() for line in lines)


def engine_stats_delta(before: dict | None, after: dict | None) -> dict | None:
    """What the engine did during a run: ``after - before`` of two step-total snapshots, plus
    each mode's mean step milliseconds and the mean switch milliseconds."""
    if before is None or after is None:
        return None
    out: dict = {}
    for key in ("steps", "step_seconds", "step_tokens"):
        out[key] = {m: after[key].get(m, 0) - before[key].get(m, 0) for m in after[key]}
    for key in ("switches", "switch_seconds"):
        out[key] = after[key] - before[key]
    out["mean_step_ms"] = {
        m: 1e3 * out["step_seconds"][m] / n for m, n in out["steps"].items() if n
    }
    switches = out["switches"]
    out["mean_switch_ms"] = 1e3 * out["switch_seconds"] / switches if switches else None
    return out


def format_engine_stats(stats: dict | None) -> str:
    if not stats:
        return "engine: no step totals (the server has no /metrics)"
    modes = ", ".join(
        f"{m} {int(n)} steps ({stats['mean_step_ms'][m]:.1f} ms)"
        for m, n in stats["steps"].items()
        if n
    )
    switch = (
        f", {int(stats['switches'])} switches ({stats['mean_switch_ms']:.1f} ms)"
        if stats["switches"]
        else ""
    )
    return f"engine: {modes or 'no steps'}{switch}"


def write_jsonl(
    path: str | Path, results: Iterable[RequestResult], summary: dict, header: dict
) -> None:
    """One line per request, then ``{"summary": summary, **header}`` (the run's description:
    command, GPU, versions)."""
    with open(path, "w") as f:
        for result in results:
            f.write(json.dumps(result.to_json()) + "\n")
        f.write(json.dumps({"summary": summary, **header}) + "\n")


def read_jsonl(path: str | Path) -> tuple[list[RequestResult], dict | None]:
    """-> (the requests, the final summary record or None if the file has none)."""
    results, summary_record = [], None
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if "summary" in record:
                summary_record = record
            else:
                results.append(RequestResult.from_json(record))
    return results, summary_record
