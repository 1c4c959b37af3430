"""SFT encoding and training: answer-only labels, the loss the loop computes against
transformers' own, a short run lowering the loss, and what the output directory holds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from sft_fixture import IMAGES, MM_KWARGS, TRAINED, VIDEO_ANSWER
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from valora.processor_config import load_processor_configs
from valora.tokenizer import Tokenizer
from valora.training.sft import SFTConfig, load_records, train_lora
from valora.training.sft_data import IGNORE_INDEX, collate_sft, encode_record, load_sft_jsonl
from valora.training.sft_loop import answer_loss_sum


@pytest.fixture(scope="module")
def encoded(checkpoint, dataset):
    tokenizer = Tokenizer.load(checkpoint)
    config = Qwen2VLConfig.from_pretrained(checkpoint)
    image_cfg, video_cfg = load_processor_configs(checkpoint, MM_KWARGS)
    records = load_sft_jsonl(dataset)
    return (
        tokenizer,
        config,
        [encode_record(r, tokenizer, config, image_cfg, video_cfg) for r in records],
    )


def test_labels_are_the_answer_and_im_end_only(encoded, dataset):
    tokenizer, config, batch = encoded
    answers = list(IMAGES.values()) + [VIDEO_ANSWER]
    assert [r["answer"] for r in load_sft_jsonl(dataset)] == answers
    for example, answer in zip(batch, answers):
        target = tokenizer.encode(answer) + [tokenizer.token_id("<|im_end|>")]
        ids, labels = example["input_ids"].tolist(), example["labels"]
        num_prompt = len(ids) - len(target)
        assert ids[num_prompt:] == target
        assert labels[num_prompt:].tolist() == target
        assert (labels[:num_prompt] == IGNORE_INDEX).all()
        assert tokenizer.decode(ids[:num_prompt]).endswith("<|im_end|>\n<|im_start|>assistant\n")
        (modality, vision), *rest = example["vision"]
        assert not rest
        pad = config.image_token_id if modality == "image" else config.video_token_id
        types = example["mm_token_type_ids"]
        assert ids.count(pad) == vision.num_tokens == int((types > 0).sum())
        assert set(types[torch.tensor(ids) == pad].tolist()) == {1 if modality == "image" else 2}
    assert [m for e in batch for m, _ in e["vision"]] == ["image"] * 4 + ["video"]

    kwargs, labels = collate_sft(batch)  # right padding: labels -100 past each row's end
    lengths = kwargs["attention_mask"].sum(1)
    for row, length in enumerate(lengths.tolist()):
        assert (labels[row, length:] == IGNORE_INDEX).all()
        assert labels[row, :length].tolist() == batch[row]["labels"].tolist()
    assert kwargs["pixel_values"].shape[0] == sum(
        v.pixel_values.shape[0] for e in batch for m, v in e["vision"] if m == "image"
    )
    assert kwargs["video_grid_thw"].shape == (1, 3)


def test_the_loop_loss_is_transformers_own(encoded, checkpoint):
    """``answer_loss_sum`` (logits only from the first answer position) equals transformers'
    shifted label loss times the number of answer tokens."""
    _, _, batch = encoded
    model = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    kwargs, labels = collate_sft(batch)
    with torch.no_grad():
        ours = answer_loss_sum(model, kwargs, labels)
        theirs = model(**kwargs, labels=labels, use_cache=False).loss
    torch.testing.assert_close(ours / (labels != IGNORE_INDEX).sum(), theirs)


def test_a_short_run_lowers_the_loss_and_writes_an_adapter(trained):
    result, out = trained
    assert result.steps == result.total_steps == TRAINED.epochs and result.num_examples == 5
    assert result.losses[-1] < result.losses[0] - 2.0  # from about ln(vocab) = 11.9
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_log.jsonl",
    ]
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, TRAINED.epochs + 1))
    assert [e["loss"] for e in log] == pytest.approx(result.losses)
    assert {e["lr"] for e in log} == {TRAINED.lr} and log[-1]["epoch"] == TRAINED.epochs
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert all(".lora_A." in k or ".lora_B." in k for k in tensors)  # no base weights
    assert any(".visual." in k for k in tensors) and any("q_proj" in k for k in tensors)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == TRAINED.rank and set(config["target_modules"]) == set(TRAINED.targets())


def test_records_in_memory_and_refusals(checkpoint, dataset, tmp_path):
    records = [json.loads(line) for line in dataset.read_text().splitlines()]
    loaded = load_records(records, root=dataset.parent)
    assert loaded == load_sft_jsonl(dataset)
    with pytest.raises(ValueError, match="not found"):
        load_records(records)  # media paths relative to the working directory
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ValueError, match="checkpoints of an earlier run"):
        train_lora(checkpoint, dataset, tmp_path, TRAINED)
    with pytest.raises(ValueError, match="unknown target preset"):
        SFTConfig(target_modules="everything")
