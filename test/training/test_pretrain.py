"""Caption pre-training of the tiny base (``valora.training.pretrain``): every weight trains on
the suite's ``pretrain`` split, the loss falls, and the result is a checkpoint that transformers
and the engine both load; the SFT run's own options it cannot take are refused."""

from __future__ import annotations

import json

import pytest
import torch

from valora.tasks.registry import generate_suite
from valora.training.pretrain import pretrain_base, pretrain_records
from valora.training.tiny_base import build_tiny_base, pretrain_config, write_tiny_base

SMALL = {"min_pixels": 28 * 28, "max_pixels": 56 * 84}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    generate_suite(root / "tasks", ["colour", "count"], 2, 2, 0, num_pretrain=8)
    return root


def test_pretraining_trains_every_weight_and_loads(suite):
    from transformers import Qwen2VLForConditionalGeneration

    cfg = pretrain_config(
        epochs=4,
        batch_size=8,
        lr=2e-2,
        lr_scheduler="constant",
        warmup_steps=0,
        progress=False,
        device="cpu",
        mm_processor_kwargs=SMALL,
    )
    out = write_tiny_base(suite / "base", seed=1, pretrain=suite / "tasks", cfg=cfg)
    assert len(pretrain_records(suite / "tasks")) == 16
    log = (out / "loss_log.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in log]
    assert len(losses) == 8 and losses[-1] < losses[0] / 2
    trained = Qwen2VLForConditionalGeneration.from_pretrained(str(out)).state_dict()
    fresh = build_tiny_base(seed=1, unit_embeddings=False).state_dict()
    changed = {k for k in fresh if not torch.equal(fresh[k], trained[k])}
    assert any(k.startswith("model.visual.") for k in changed)
    assert any(".layers." in k for k in changed) and "lm_head.weight" in changed

    from valora.llm import LLM
    from valora.sampling_params import SamplingParams

    llm = LLM(str(out), device="cpu", num_token=512)
    text = llm.generate("Describe the image.", SamplingParams(max_tokens=3), use_tqdm=False)
    assert len(text[0].outputs[0].token_ids) >= 1


def test_pretraining_needs_the_split_and_refuses_sft_only_options(suite, tmp_path):
    with pytest.raises(ValueError, match="--pretrain N"):
        pretrain_records(tmp_path)
    for option in ({"load_in_4bit": True}, {"save_every": 2}, {"resume": True}):
        with pytest.raises(ValueError, match="no 4-bit base"):
            pretrain_base(tmp_path, suite / "tasks", tmp_path / "o", pretrain_config(**option))
