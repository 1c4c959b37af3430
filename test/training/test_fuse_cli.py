"""``valora-fuse`` end to end on the tiny base (real trainer, real offline scoring): two tasks
with floors the adapters meet fuse into one adapter, which the engine loads from the manifest.
(Rollback is tested on a scripted trainer in ``test_fusion.py``.)"""

from __future__ import annotations

import json

import pytest

from valora.fuse import run
from valora.llm import LLM
from valora.tasks.registry import generate_suite
from valora.training.tiny_base import write_tiny_base

TRAIN = ["--epochs", "1", "--batch-size", "4", "--rank", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    base = write_tiny_base(root / "base")
    generate_suite(root / "tasks", ["colour", "count"], 8, 4, 0)
    return root, str(base)


def test_reachable_floors_fuse_into_one_adapter(suite):
    root, base = suite
    out = root / "one"
    args = ["--model", base, "--data", str(root / "tasks"), "--out", str(out), *TRAIN]
    record = run([*args, "--floor", "colour=0", "--floor", "count=0", "--max-tokens", "4"])
    assert record["num_adapters"] == 1 and record["one_adapter_per_task"] == 2
    assert record["trainings"] == 2 and all(t["met"] for t in record["tasks"].values())
    assert json.loads((out / "manifest.json").read_text()) == record
    name, path = record["lora_modules"].split("=")
    llm = LLM(base, device="cpu", lora_modules={name: path}, lora_backend="torch")
    assert name in llm.engine.adapters()
