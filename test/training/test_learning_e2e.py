"""The whole pipeline learns, on the CPU (slow: about 4 minutes on two cores; run with
``pytest --run-slow test/training/test_learning_e2e.py``).

Generate two tasks (``colour`` on images, ``clip_colour`` on videos), fuse them into adapters
under accuracy floors on the tiny base (``valora-fuse``: real training, real scoring), serve the
adapters (``valora-serve``) and evaluate base and adapters through the server (``valora-eval``).
Asserted: on held-out data each task's adapter beats the base by a wide margin, fusion needs
fewer adapters than tasks with every floor met, and the server's evaluation equals the offline
one. ``examples/pipeline_cpu.sh`` runs the same recipe; its output is committed under
``benchmarks/results/pipeline_cpu/``. (These are the suite's tasks the 64-wide tiny model learns
in CPU minutes; the README says what it does on the others.)
"""

from __future__ import annotations

import json

import pytest
from server_fixture import running_server

from valora.eval import run as run_eval
from valora.fuse import run as run_fuse
from valora.tasks.registry import generate_suite
from valora.training.tiny_base import write_tiny_base

pytestmark = pytest.mark.slow

TASKS = ["colour", "clip_colour"]
FLOORS = {"colour": 0.8, "clip_colour": 0.8}
# held-out gain of the task's adapter over the base, in exact-match accuracy (chance: 0.25)
MARGINS = {"colour": 0.5, "clip_colour": 0.5}
TRAIN = ["--rank", "16", "--target-modules", "all", "--epochs", "15", "--lr", "3e-3"]
TRAIN += ["--batch-size", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def torch_lora_backend():
    """The engines here pick the torch LoRA backend on the CPU, as the CLIs do outside pytest:
    the test session's Triton interpreter (conftest) would run ATMM for minutes per scoring."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "0")
        yield


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, torch_lora_backend):
    root = tmp_path_factory.mktemp("learning")
    generate_suite(root / "tasks", TASKS, 200, 50, 0)
    base = str(write_tiny_base(root / "base"))
    floors = [arg for task, floor in FLOORS.items() for arg in ("--floor", f"{task}={floor}")]
    manifest = run_fuse(
        ["--model", base, "--data", str(root / "tasks"), "--out", str(root / "fused")]
        + floors
        + TRAIN
    )
    return root, base, manifest


def _evaluate(root, manifest, *target: str) -> dict:
    mapping = [f"{task}={entry['adapter']}" for task, entry in manifest["tasks"].items()]
    adapters = sorted({entry["adapter"] for entry in manifest["tasks"].values()})
    args = ["--data", str(root / "tasks"), "--split", "val", "--no-tqdm"]
    args += ["--adapters", "base", *adapters, "--task-adapter", *mapping]
    return run_eval([*args, *target])


def test_fusion_needs_fewer_adapters_than_tasks_and_meets_every_floor(pipeline):
    _, _, manifest = pipeline
    assert manifest["num_adapters"] < len(TASKS) == manifest["one_adapter_per_task"]
    for task, entry in manifest["tasks"].items():
        assert entry["met"] and entry["score"] >= FLOORS[task], (task, entry)


def test_adapters_beat_the_base_and_the_server_agrees_with_offline(pipeline):
    root, base, manifest = pipeline
    modules = manifest["lora_modules"]
    offline = _evaluate(
        root,
        manifest,
        *("--model", base, "--device", "cpu", "--out", str(root / "offline.json")),
        *("--lora-modules", *modules.split()),
    )
    with running_server("--model", base, "--lora-modules", *modules.split()) as (url, _, _):
        served = _evaluate(root, manifest, "--server", url, "--out", str(root / "eval.json"))
    assert served["predictions"] == offline["predictions"]
    assert served["results"] == offline["results"]
    scores = {(r["task"], r["adapter"]): r["score"] for r in served["results"]}
    for task in TASKS:
        adapter = manifest["tasks"][task]["adapter"]
        gain = scores[task, adapter] - scores[task, "base"]
        assert gain >= MARGINS[task], (task, scores[task, "base"], scores[task, adapter])
    print(json.dumps(served["results"], indent=1))
