"""Evaluate adapters on task examples: plan which adapter sees which task, ask a predictor for
every (example, adapter) job at once (so a multi-adapter engine batches them together), score
each (task, adapter) with the task's metric.

A predictor is any ``predict_fn(examples, adapters, classify) -> list[str]``: one prediction per
example, ``adapters[i]`` naming the adapter for ``examples[i]`` (``"base"`` = the base model);
``classify=True`` asks for the label of the adapter's task head instead of generated text.
``valora.evaluation.offline.OfflineRunner`` and ``valora.evaluation.server.ServerRunner``
are two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from valora.evaluation.metrics import SCORERS, score_all

BASE = "base"
PredictFn = Callable[[list[dict], list[str], bool], list[str]]


@dataclass(frozen=True)
class EvalResult:
    """``rows``: one dict per (task, adapter): task, adapter, mode ("generate" | "head"),
    metric (the task's primary metric, "classify" for head adapters), score (that metric's
    value), exact, bleu, edit, n. ``predictions``: one dict per job: id, task, adapter,
    prediction, answer."""

    rows: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)


def plan(
    tasks: Sequence[str],
    adapters: Sequence[str],
    task_adapters: Mapping[str, Sequence[str]] | None = None,
) -> list[tuple[str, str]]:
    """(task, adapter) pairs to evaluate. ``task_adapters`` {task: [adapter ...]} restricts each
    adapter it names to its mapped tasks (and adds it when ``adapters`` lacks it); the base and
    unmapped adapters run on every task."""
    task_adapters = task_adapters or {}
    unknown = sorted(set(task_adapters) - set(tasks))
    if unknown:
        raise ValueError(f"--task-adapter names tasks not in the data: {unknown}")
    mapped: dict[str, set[str]] = {}
    for task, names in task_adapters.items():
        for name in names:
            mapped.setdefault(name, set()).add(task)
    order = list(dict.fromkeys([*adapters, *mapped]))
    return [
        (task, adapter)
        for adapter in order
        for task in tasks
        if adapter == BASE or adapter not in mapped or task in mapped[adapter]
    ]


def task_metric(examples: Sequence[dict]) -> str:
    """The metric a task's examples name (one per task)."""
    metrics = {e["metric"] for e in examples}
    if len(metrics) != 1:
        raise ValueError(f"task {examples[0]['task']!r} mixes metrics {sorted(metrics)}")
    return metrics.pop()


def evaluate(
    examples: Sequence[dict],
    predict_fn: PredictFn,
    adapters: Sequence[str] = (BASE,),
    task_adapters: Mapping[str, Sequence[str]] | None = None,
    head_adapters: Sequence[str] = (),
) -> EvalResult:
    """Score ``adapters`` on ``examples`` grouped by task (see ``plan``). ``head_adapters`` are
    evaluated through their task head (one ``predict_fn(..., classify=True)`` call), the rest
    by greedy generation (one call)."""
    if BASE in head_adapters:
        raise ValueError("the base model has no task head")
    by_task: dict[str, list[dict]] = {}
    for example in examples:
        by_task.setdefault(example["task"], []).append(example)
    pairs = plan(list(by_task), adapters, task_adapters)
    texts: dict[tuple[str, str], list[str]] = {}
    for classify in (False, True):
        chosen = [(t, a) for t, a in pairs if (a in head_adapters) == classify]
        jobs = [(e, a) for t, a in chosen for e in by_task[t]]
        if not jobs:
            continue
        out = predict_fn([e for e, _ in jobs], [a for _, a in jobs], classify)
        if len(out) != len(jobs):
            raise ValueError(f"the predictor gave {len(out)} predictions for {len(jobs)} jobs")
        start = 0
        for task, adapter in chosen:
            texts[(task, adapter)] = list(out[start : start + len(by_task[task])])
            start += len(by_task[task])
    result = EvalResult()
    for task, adapter in pairs:
        head = adapter in head_adapters
        result.rows.append(score(by_task[task], texts[(task, adapter)], adapter, head))
        result.predictions.extend(
            {
                "id": e["id"],
                "task": task,
                "adapter": adapter,
                "prediction": p,
                "answer": e["answer"],
            }
            for e, p in zip(by_task[task], texts[(task, adapter)])
        )
    return result


def score(examples: Sequence[dict], predictions: list[str], adapter: str, head: bool) -> dict:
    """One result row: the task's primary metric as ``score``, and every metric."""
    answers = [e["answer"] for e in examples]
    metric = "classify" if head else task_metric(examples)
    return {
        "task": examples[0]["task"],
        "adapter": adapter,
        "mode": "head" if head else "generate",
        "metric": metric,
        "score": SCORERS[metric](predictions, answers),
        **score_all(predictions, answers),
        "n": len(examples),
    }
