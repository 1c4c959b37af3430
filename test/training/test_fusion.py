"""The greedy fusion search on a scripted trainer/evaluator: which fusions are kept, which are
rolled back, the order heuristic, and the manifest."""

from __future__ import annotations

import json

from valora.training.fusion import FusionTask, fuse, fusion_order, manifest

TASKS = [
    FusionTask("count", 0.8),
    FusionTask("colour", 0.9),
    FusionTask("ocr", 0.5, "edit"),
    FusionTask("action", 0.7, modality="video"),
    FusionTask("latex", 30.0, "bleu"),
]


class Scripted:
    """Writes a marker file per adapter; a task's score drops when it shares an adapter with a
    task named in ``conflicts`` (its knowledge does not fit beside it)."""

    def __init__(self, conflicts: dict[str, set[str]]) -> None:
        self.conflicts = conflicts
        self.trained: list[tuple[str, ...]] = []

    def train(self, tasks, path):
        path.mkdir(parents=True)
        (path / "tasks.json").write_text(json.dumps(list(tasks)))
        self.trained.append(tuple(tasks))

    def evaluate(self, path, task):
        fused = set(json.loads((path / "tasks.json").read_text()))
        floor = {t.name: t.floor for t in TASKS}[task]
        clash = self.conflicts.get(task, set()) & fused
        return floor * (0.5 if clash else 1.1)


def test_the_order_groups_modalities_and_puts_strict_floors_first():
    # latex's BLEU floor of 30 is 0.3 of its scale: less strict than ocr's 0.5
    assert [t.name for t in fusion_order(TASKS)] == ["colour", "count", "ocr", "latex", "action"]


def test_compatible_tasks_share_one_adapter(tmp_path):
    s = Scripted({})
    plan = fuse(TASKS, s.train, s.evaluate, tmp_path)
    assert [a.tasks for a in plan.adapters] == [["colour", "count", "ocr", "latex", "action"]]
    assert plan.unmet() == [] and plan.trainings == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter-0"]  # attempts cleaned up
    assert json.loads((tmp_path / "adapter-0" / "tasks.json").read_text())[-1] == "action"


def test_a_fusion_that_breaks_a_floor_is_rolled_back(tmp_path):
    s = Scripted({"colour": {"ocr"}, "action": {"count"}})
    plan = fuse(TASKS, s.train, s.evaluate, tmp_path)
    # ocr would pull colour below its floor: rolled back, ocr opens adapter 1; action clashes
    # with count (adapter 0) but joins adapter 1, the current one
    assert [a.tasks for a in plan.adapters] == [["colour", "count"], ["ocr", "latex", "action"]]
    assert plan.unmet() == []
    # the kept adapter 0 is the one trained before the rolled-back fusion
    assert json.loads((tmp_path / "adapter-0" / "tasks.json").read_text()) == ["colour", "count"]
    m = manifest(plan, TASKS)
    assert m["num_adapters"] == 2 and m["one_adapter_per_task"] == 5
    assert m["tasks"]["ocr"]["adapter"] == "fused1" and all(t["met"] for t in m["tasks"].values())
    assert m["lora_modules"] == f"fused0={tmp_path / 'adapter-0'} fused1={tmp_path / 'adapter-1'}"


def test_a_task_that_misses_its_floor_alone_keeps_its_own_adapter(tmp_path):
    s = Scripted({"count": {"count"}})  # count never reaches its floor
    plan = fuse(TASKS, s.train, s.evaluate, tmp_path)
    assert plan.unmet() == ["count"]
    assert plan.adapter_of("count").tasks == ["count"]
    assert manifest(plan, TASKS)["tasks"]["count"]["met"] is False
