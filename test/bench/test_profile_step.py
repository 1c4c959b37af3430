"""profile_step.py on the tiny engine: each pinned mode's steps run in that mode, every round
prefills the whole batch (no prefix caching) and the kernel table is produced."""

from __future__ import annotations

import json

import profile_step


def test_profile_step_pins_each_mode_and_times_every_forward(tmp_path):
    out = tmp_path / "profile.json"
    engine_args = (
        "--model-setting tiny --device cpu --num-adapter 2 --lora-backend torch "
        "--scheduler valora --no-prefix-caching --num-token 8192"
    )
    profile_step.main(
        [
            "--engine_args",
            engine_args,
            "--adapters",
            "lora0",
            "lora1",
            "base",
            "--task",
            "vqa",
            "vat",
            "--modes",
            "mixture",
            "unmerged",
            "--rounds",
            "2",
            "--top",
            "3",
            "--max-output-tokens",
            "3",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"vqa", "vat"}
    for task_modes in result["tasks"].values():
        assert set(task_modes) == {"mixture", "unmerged"}
    for mode, record in [m for t in result["tasks"].values() for m in t.items()]:
        rounds = record["rounds"]
        assert len(rounds) == 2 and record["kernels"]
        for steps in rounds:
            assert {s["mode"] for s in steps} == {mode}
            assert all(s["ms"] > 0 for s in steps)
            # the first step prefills every prompt; then each request decodes its 2 more tokens
            assert steps[0]["tokens"] > 3 and [s["tokens"] for s in steps[1:]] == [3, 3]
        assert rounds[0][0]["tokens"] == rounds[1][0]["tokens"]  # no prefix-cache hit
