"""The pipeline end to end on the tiny base: ``valora-fuse`` (real trainer, real offline
scoring) fuses two tasks whose floors the adapter meets into one adapter; ``valora-serve`` serves
the manifest's ``--lora-modules``; ``valora-eval`` through the server gives exactly the offline
evaluation's predictions and scores. (Rollback is tested on a scripted trainer in
``test_fusion.py``; the tiny random base learns too little for accuracy margins.)"""

from __future__ import annotations

import json

import pytest
from server_fixture import running_server

from valora.eval import run as run_eval
from valora.fuse import run
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
    modules = record["lora_modules"]
    common = ["--data", str(root / "tasks"), "--adapters", "base", "fused0", "--no-tqdm"]
    common += ["--max-tokens", "4"]
    offline = run_eval(
        [
            *common,
            "--model",
            base,
            "--device",
            "cpu",
            "--lora-backend",
            "torch",
            "--lora-modules",
            modules,
            "--out",
            str(root / "offline.json"),
        ]
    )
    with running_server("--model", base, "--lora-modules", modules, "--lora-backend", "torch") as (
        url,
        _,
        _,
    ):
        served = run_eval([*common, "--server", url, "--out", str(root / "served.json")])
    assert served["predictions"] == offline["predictions"] and len(served["predictions"]) == 16
    assert served["results"] == offline["results"]
