"""Resumable checkpoints: a run interrupted after N steps and resumed (through the CLI) ends with
the same adapter (within 1e-6) and the same loss log as a run of 2N steps straight, with dropout,
gradient accumulation, a short last step per epoch, warm-up and a decaying schedule in play; the
straight run encodes its batches in two DataLoader workers, the other in-process."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from sft_fixture import MM_KWARGS

from valora.train import main
from valora.training.sft import SFTConfig, train_lora

# 5 examples, micro-batches of 2 -> 3 a epoch; 2 a step -> 2 steps a epoch (the second short)
CFG = SFTConfig(
    rank=4,
    alpha=8,
    dropout=0.1,
    target_modules=("q_proj", "v_proj", "down_proj", "attn.qkv"),
    lr=5e-3,
    warmup_steps=2,
    lr_scheduler="linear",
    epochs=3,
    batch_size=2,
    grad_accum=2,
    seed=3,
    device="cpu",
    dtype="float32",
    progress=False,
    mm_processor_kwargs=MM_KWARGS,
)
N = 3  # the interruption falls inside epoch 1


def cli_args(checkpoint, dataset, out) -> list[str]:
    return [
        *("--model", checkpoint, "--data", str(dataset), "--out", str(out)),
        *("--rank", "4", "--alpha", "8", "--dropout", "0.1", "--lr", "5e-3", "--seed", "3"),
        *("--target-modules", "q_proj", "v_proj", "down_proj", "attn.qkv"),
        *("--warmup-steps", "2", "--lr-scheduler", "linear", "--epochs", "3"),
        *("--batch-size", "2", "--grad-accum", "2", "--device", "cpu", "--dtype", "float32"),
        *("--mm-processor-kwargs", json.dumps(MM_KWARGS), "--no-progress"),
    ]


def log_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]


def test_interrupted_and_resumed_equals_straight(checkpoint, dataset, tmp_path, capsys):
    straight = train_lora(checkpoint, dataset, tmp_path / "straight", replace(CFG, num_workers=2))
    assert straight.total_steps == 2 * N == straight.steps
    out = tmp_path / "resumed"
    main(cli_args(checkpoint, dataset, out) + ["--stop-after-steps", str(N)])
    assert "stopped; resume from" in capsys.readouterr().out
    assert [p.name for p in out.iterdir() if p.is_dir()] == [f"checkpoint-{N}"]
    assert not (out / "adapter_model.safetensors").exists()  # only a finished run writes it
    main(cli_args(checkpoint, dataset, out) + ["--resume", "--save-every", "2"])
    assert "adapter written to" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-6",
    ]
    want = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    straight_log, resumed_log = log_of(tmp_path / "straight"), log_of(out)
    assert [e["step"] for e in resumed_log] == list(range(1, 2 * N + 1))
    for a, b in zip(straight_log, resumed_log):
        assert a["lr"] == pytest.approx(b["lr"]) and a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert straight_log[0]["lr"] < straight_log[1]["lr"]  # warm-up, then decay
    assert straight_log[-1]["lr"] < straight_log[2]["lr"]


def test_resuming_with_another_setting_is_refused(checkpoint, dataset, tmp_path):
    train_lora(checkpoint, dataset, tmp_path, replace(CFG, stop_after_steps=1))
    with pytest.raises(ValueError, match="cannot resume .* rank"):
        train_lora(checkpoint, dataset, tmp_path, replace(CFG, rank=8, resume=True))
