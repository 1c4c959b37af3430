"""bench_train_step.py on the tiny setting (CPU): a dummy checkpoint is written, LoRA steps run on
the bf16 and NF4 bases through the trainer's own loading and collation, and the trained adapter
is served beside the base; the result file has every field the GPU run reports."""

from __future__ import annotations

import json

import bench_train_step
import pytest


def test_train_step_bench_times_both_bases_and_serves_the_adapter(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "train_step.json"
    args = ["--models", "tiny", "--bases", "bf16", "nf4", "--device", "cpu", "--batch-size", "2"]
    args += ["--image-size", "56", "--steps", "1", "--serve-batch", "2", "--out", str(out)]
    bench_train_step.main([*args, "--work-dir", str(tmp_path / "work")])
    record = json.loads(out.read_text())
    assert record["gpu"] == "cpu" and "bench_train_step.py" in record["command"]
    bf16, nf4 = record["runs"]
    assert (bf16["base"], nf4["base"]) == ("bf16", "nf4")
    assert not bf16["gradient_checkpointing"] and nf4["gradient_checkpointing"]
    for run in (bf16, nf4):
        assert run["step_s"] > 0 and run["tokens"] > run["image_patches"] / 4 > 0
        assert run["trainable_params"] > 0 and run["step_matmul_flops"] > 0
    served = bf16["serving"]
    assert served["adapter"]["decode_tok_s"] > 0 and served["base"]["decode_tok_s"] > 0
    assert (tmp_path / "work" / "adapter-tiny-bf16" / "adapter_config.json").is_file()
