"""Accuracy-aware adapter generation (VaLoRA's knowledge fusion): pack tasks into the fewest LoRA
adapters such that every task meets its accuracy floor.

Greedy, as the paper describes: tasks are visited in a fixed order; each is fused into the
current adapter (retrain on the union of the fused tasks' training data, then evaluate *every*
fused task on its validation data); if any fused task falls below its floor, the fusion is rolled
back (the current adapter stays as it was, without the new task) and the task opens a new adapter.
A task that misses its floor even alone keeps an adapter of its own and is reported as not met.

Order heuristic (the paper notes the order matters): tasks of the same modality are visited
together (images, then videos: their knowledge is closer, so fusions within a group succeed more
often), and within a group the strictest floors first (as a fraction of the metric's scale), so a
strict task opens an adapter and looser tasks join it; ties by name. Training and evaluation are
injected (``train`` and ``evaluate``), so the search is independent of how adapters are trained
or scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FusionTask:
    name: str
    floor: float  # the task's accuracy requirement, in its metric's units
    metric: str = "exact"
    modality: str = "image"


METRIC_FULL_SCALE = {"bleu": 100.0}  # sacrebleu's corpus BLEU; exact and edit are 0-1


@dataclass
class FusedAdapter:
    path: Path
    tasks: list[str]
    scores: dict[str, float] = field(default_factory=dict)  # task -> validation score


@dataclass
class FusionPlan:
    adapters: list[FusedAdapter]
    floors: dict[str, float]
    trainings: int = 0  # adapters trained (each fusion attempt trains one)

    def adapter_of(self, task: str) -> FusedAdapter:
        return next(a for a in self.adapters if task in a.tasks)

    def unmet(self) -> list[str]:
        return [t for a in self.adapters for t in a.tasks if a.scores[t] < self.floors[t]]


# train(task names, adapter directory) -> None: trains one adapter on the union of their data
Train = Callable[[Sequence[str], Path], None]
# evaluate(adapter directory, task name) -> the task's validation score with that adapter
Evaluate = Callable[[Path, str], float]


def fusion_order(tasks: Sequence[FusionTask]) -> list[FusionTask]:
    """Same-modality tasks together (images first), strictest floor first (as a fraction of the
    metric's full scale: BLEU is 0-100, the others 0-1), then by name."""
    modality_rank = {"image": 0, "video": 1}

    def key(task: FusionTask) -> tuple:
        strictness = task.floor / METRIC_FULL_SCALE.get(task.metric, 1.0)
        return modality_rank.get(task.modality, 2), -strictness, task.name

    return sorted(tasks, key=key)


def fuse(tasks: Sequence[FusionTask], train: Train, evaluate: Evaluate, out: Path) -> FusionPlan:
    """The greedy search; adapters are written under ``out`` (``adapter-0``, ``adapter-1``...,
    rejected fusions under ``attempt-<n>`` and removed)."""
    floors = {t.name: t.floor for t in tasks}
    plan = FusionPlan([], floors)
    current: FusedAdapter | None = None
    for task in fusion_order(tasks):
        if current is not None:
            fused = _try_fusion(current, task.name, plan, train, evaluate, out)
            if fused is not None:
                plan.adapters[-1] = current = fused
                continue
        current = _open_adapter(task.name, plan, train, evaluate, out)
        plan.adapters.append(current)
    return plan


def _open_adapter(task: str, plan: FusionPlan, train, evaluate, out: Path) -> FusedAdapter:
    path = out / f"adapter-{len(plan.adapters)}"
    return _train_and_score([task], path, plan, train, evaluate)


def _try_fusion(current, task: str, plan: FusionPlan, train, evaluate, out: Path):
    """``current`` + ``task`` retrained on the union, if every fused task meets its floor
    (then it replaces ``current``'s directory); None (rolled back) otherwise."""
    attempt = out / f"attempt-{plan.trainings}"
    fused = _train_and_score([*current.tasks, task], attempt, plan, train, evaluate)
    if any(fused.scores[t] < plan.floors[t] for t in fused.tasks):
        _remove(attempt)
        return None
    _remove(current.path)
    attempt.rename(current.path)
    fused.path = current.path
    return fused


def _train_and_score(tasks: list[str], path: Path, plan: FusionPlan, train, evaluate):
    train(tasks, path)
    plan.trainings += 1
    return FusedAdapter(path, tasks, {t: evaluate(path, t) for t in tasks})


def _remove(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def manifest(plan: FusionPlan, tasks: Sequence[FusionTask], prefix: str = "fused") -> dict:
    """What ``valora-fuse`` writes: adapters, per-task adapter / score / floor / met, the counts,
    and the server's ``--lora-modules`` argument."""
    names = {id(a): f"{prefix}{i}" for i, a in enumerate(plan.adapters)}
    per_task = {}
    for task in tasks:
        adapter = plan.adapter_of(task.name)
        score = adapter.scores[task.name]
        per_task[task.name] = {
            "adapter": names[id(adapter)],
            "metric": task.metric,
            "score": score,
            "floor": task.floor,
            "met": score >= task.floor,
        }
    return {
        "adapters": [
            {"name": names[id(a)], "path": str(a.path), "tasks": a.tasks} for a in plan.adapters
        ],
        "tasks": per_task,
        "num_adapters": len(plan.adapters),
        "one_adapter_per_task": len(tasks),
        "trainings": plan.trainings,
        "lora_modules": " ".join(f"{names[id(a)]}={a.path}" for a in plan.adapters),
    }
