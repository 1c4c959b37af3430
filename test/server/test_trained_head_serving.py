"""Train an adapter and its task head with PEFT on the HF model (tiny, synthetic coloured-square
images, 4 classes), serve the saved adapter directory, and classify the held-out images through
``/v1/classify``: the served accuracy equals the trainer's held-out accuracy, far above chance."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from hf_reference import make_hf_model, save_checkpoint
from server_fixture import assert_idle, running_server

from valora.tokenizer import Tokenizer
from valora.training import synthetic_clips as syn
from valora.training import train_task_head as tr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = syn.write_dataset(root / "data", 64, "image", 4, size=(56, 56), seed=0)
    cfg = tr.TrainConfig(epochs=15, lr=1e-3, vision_lora=True, seed=0, device="cpu")
    base = save_checkpoint(make_hf_model(False), root / "base", "original-flat-single")
    result = tr.train_task_head(make_hf_model(False), Tokenizer.builtin(), data, root / "out", cfg)
    return str(base), str(root / "out"), data, result, cfg


def held_out_examples(data, cfg):
    labels, examples = tr.load_dataset(data)
    _, held = tr.split_held_out(examples, [e.label_index for e in examples], cfg.held_out, cfg.seed)
    return labels, held


def test_served_head_gets_the_trainers_held_out_accuracy(trained):
    base, out, data, result, cfg = trained
    assert result.held_out_accuracy >= 0.75  # chance: 0.25
    labels, held = held_out_examples(data, cfg)
    assert len(held) == result.num_held_out
    question = syn.QUESTIONS["image"]
    with running_server(
        "--model", base, "--lora-modules", f"shapes={out}", "--lora-backend", "torch"
    ) as (url, engine, _):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        # the served prompt is the one the trainer used
        assert engine.tokenizer.apply_chat_template(messages) == syn.chat_prompt("image")
        correct = 0
        for example in held:
            png = base64.b64encode(example.image.read_bytes()).decode()
            content = [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                {"type": "text", "text": question},
            ]
            body = {"model": "shapes", "messages": [{"role": "user", "content": content}]}
            reply = httpx.post(url + "/v1/classify", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            correct += reply.json()["data"][0]["label"] == labels[example.label_index]
        assert correct / len(held) == pytest.approx(result.held_out_accuracy)
        assert json.loads(json.dumps(engine.task_labels("shapes"))) == labels
        assert_idle(url)
