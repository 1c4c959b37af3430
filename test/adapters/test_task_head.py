"""Vision task heads: the file format and its validation, the head's math against a plain-torch
reference, the synthetic data set, and joint LoRA + head training on transformers' tiny Qwen2-VL
(CPU, fp32)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_reference import make_hf_model
from safetensors.torch import save_file

from valora.adapters import task_head as th
from valora.adapters.peft_loader import load_peft_adapter
from valora.adapters.task_head import (
    ACTIVATIONS,
    TaskHeadSpec,
    head_reference_probs,
    load_task_head,
    save_task_head,
)
from valora.config import ModelConfig
from valora.tokenizer import Tokenizer
from valora.training import synthetic_clips as syn
from valora.training import train_task_head as tr

HIDDEN = 16
LABELS = ["walk", "run", "jump"]


def make_spec(activation: str = "gelu") -> TaskHeadSpec:
    return TaskHeadSpec([[HIDDEN, 32], [32, 3]], LABELS, HIDDEN, activation=activation)


def make_tensors(spec: TaskHeadSpec, dtype=torch.float32, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.tensor_shapes()
    return {k: (0.5 * torch.randn(s, generator=gen)).to(dtype) for k, s in shapes.items()}


def write_raw(directory: Path, config: dict | None, tensors: dict | None) -> Path:
    """The two files as given, bypassing ``save_task_head``'s validation."""
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (directory / th.HEAD_CONFIG_FILE).write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(directory / th.HEAD_WEIGHTS_FILE))
    return directory


# ---- format ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip(tmp_path, dtype):
    spec, tensors = make_spec(), make_tensors(make_spec(), dtype)
    save_task_head(tensors, spec, tmp_path)
    head = load_task_head(tmp_path, HIDDEN)
    assert head.spec == spec and head.labels == tuple(LABELS) and head.num_classes == 3
    assert json.loads((tmp_path / th.HEAD_CONFIG_FILE).read_text()) == spec.to_dict()
    state = head.state_dict()
    assert set(state) == set(tensors)
    assert all(torch.equal(state[k], tensors[k]) and state[k].dtype == dtype for k in tensors)
    assert head.digest and not any(p.requires_grad for p in head.parameters())
    save_task_head(head, spec, tmp_path / "again")  # a loaded head saves back identically
    assert (tmp_path / "again" / th.HEAD_WEIGHTS_FILE).read_bytes() == (
        tmp_path / th.HEAD_WEIGHTS_FILE
    ).read_bytes()


def test_no_head_is_none(tmp_path):
    assert load_task_head(tmp_path, HIDDEN) is None


def _config(**changes) -> dict:
    return {**make_spec().to_dict(), **changes}


def _tensors(drop: str | None = None, **extra) -> dict:
    tensors = make_tensors(make_spec())
    tensors.pop(drop, None)
    return {**tensors, **extra}


def _nan_tensors() -> dict:
    tensors = make_tensors(make_spec())
    tensors["layers.1.weight"][0, 0] = float("nan")
    return tensors


BAD_HEADS = {
    "chain": (_config(layers=[[16, 32], [31, 3]]), _tensors(), "chain is broken"),
    "first-in": (_config(layers=[[8, 32], [32, 3]]), _tensors(), "layer 0 takes 8"),
    "label-count": (_config(labels=["walk", "run"]), _tensors(), "wrong label count"),
    "duplicate-labels": (_config(labels=["walk", "run", "walk"]), _tensors(), "duplicate"),
    "empty-label": (_config(labels=["walk", "", "jump"]), _tensors(), "non-empty"),
    "label-type": (_config(labels=["walk", 3, "jump"]), _tensors(), "non-empty strings"),
    "activation": (_config(activation="swish"), _tensors(), "activation 'swish'"),
    "version": (_config(format_version=2), _tensors(), "format_version 2"),
    "pooling": (_config(pooling="mean"), _tensors(), "pooling 'mean'"),
    "unknown-key": (_config(bias=True), _tensors(), "unknown keys ['bias']"),
    "missing-key": ({"format_version": 1}, _tensors(), "missing keys"),
    "missing-tensor": (_config(), _tensors(drop="layers.1.bias"), "missing tensors"),
    "extra-tensor": (_config(), _tensors(**{"layers.2.weight": torch.zeros(1)}), "extra tensors"),
    "shape": (_config(), _tensors(**{"layers.0.bias": torch.zeros(31)}), "has shape (31,)"),
    "dtype": (
        _config(),
        _tensors(**{"layers.0.bias": torch.zeros(32, dtype=torch.int32)}),
        "dtype",
    ),
    "nan": (_config(), _nan_tensors(), "non-finite"),
    "json-without-safetensors": (_config(), None, "task_head.json without task_head.safetensors"),
    "safetensors-without-json": (None, _tensors(), "task_head.safetensors without task_head.json"),
}


@pytest.mark.parametrize("case", list(BAD_HEADS))
def test_invalid_heads_are_refused_with_the_reason(tmp_path, case):
    config, tensors, message = BAD_HEADS[case]
    write_raw(tmp_path, config, tensors)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_task_head(tmp_path, HIDDEN)


def test_hidden_size_must_match_the_model(tmp_path):
    save_task_head(make_tensors(make_spec()), make_spec(), tmp_path)
    with pytest.raises(ValueError, match="does not match the base model's hidden size 64"):
        load_task_head(tmp_path, 64)


def test_bad_json_and_oversized_files(tmp_path, monkeypatch):
    write_raw(tmp_path, None, _tensors())
    (tmp_path / th.HEAD_CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_task_head(tmp_path, HIDDEN)
    write_raw(tmp_path, _config(), None)
    monkeypatch.setattr(th, "MAX_HEAD_WEIGHTS_BYTES", 100)
    with pytest.raises(ValueError, match="is larger than 100 bytes"):
        load_task_head(tmp_path, HIDDEN)


def test_root_confines_the_reads(tmp_path):
    """A head file linked to a path outside the adapter root is refused, as LoRA files are."""
    outside = save_task_head(make_tensors(make_spec()), make_spec(), tmp_path / "outside")
    adapter = tmp_path / "root" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / th.HEAD_CONFIG_FILE).write_text(json.dumps(_config()))
    (adapter / th.HEAD_WEIGHTS_FILE).symlink_to(outside / th.HEAD_WEIGHTS_FILE)
    assert load_task_head(adapter, HIDDEN) is not None
    with pytest.raises(PermissionError, match="outside the adapter root"):
        load_task_head(adapter, HIDDEN, root=tmp_path / "root")


def test_save_refuses_an_invalid_head_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="missing tensors"):
        save_task_head(_tensors(drop="layers.0.weight"), make_spec(), tmp_path)
    with pytest.raises(ValueError, match="wrong label count"):
        TaskHeadSpec([[HIDDEN, 2]], LABELS, HIDDEN)
    assert not list(tmp_path.iterdir())


# ---- math ------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probs_match_the_plain_torch_reference(tmp_path, activation, dtype):
    spec = make_spec(activation)
    save_task_head(make_tensors(spec, dtype), spec, tmp_path)
    head = load_task_head(tmp_path, HIDDEN)
    hidden = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(1)).to(dtype)
    probs = head(hidden)
    assert probs.dtype == torch.float32 and probs.shape == (5, 3)
    torch.testing.assert_close(probs, head_reference_probs(hidden, tmp_path), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


def test_hf_last_hidden_state_is_after_the_final_norm():
    """What training reads (``hidden_states[-1]``) is the final norm's output in transformers 5:
    it equals the text model's ``last_hidden_state`` and gives the logits through lm_head."""
    model = make_hf_model(tie_word_embeddings=False)
    ids = torch.tensor([[9707, 11, 1879, 0, 151645]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        final = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out.hidden_states[-1], final)
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)
    renormed = model.model.language_model.norm(out.hidden_states[-1])
    assert not torch.allclose(renormed, out.hidden_states[-1])  # a distinct, non-idempotent norm


# ---- synthetic data --------------------------------------------------------------------------
def _centroid(frame: np.ndarray, level: int = 200) -> np.ndarray:
    ys, xs = np.nonzero(frame.min(axis=-1) > level)
    return np.array([xs.mean(), ys.mean()])


def test_clips_move_in_their_class_direction(tmp_path):
    rng = np.random.default_rng(0)
    want = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}  # right, down, left, up
    for label, direction in want.items():
        clip = syn.make_clip(label, rng, 8, 56, 84)
        assert clip.shape == (8, 56, 84, 3) and clip.dtype == np.uint8
        moved = _centroid(clip[-1]) - _centroid(clip[0])
        assert np.dot(moved, direction) > 5 and abs(np.dot(moved, direction[::-1])) < 2
    import av

    syn.write_mp4(clip, tmp_path / "clip.mp4", fps=2)
    with av.open(str(tmp_path / "clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (56, 84, 3)
    # lossy (yuv420p, per-pixel noise blurred) but the square is where it was
    assert np.abs(_centroid(frames[-1], 150) - _centroid(clip[-1], 150)).max() < 1.5


# ---- training --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.builtin()


def test_padded_batches_match_single_examples(tmp_path, tokenizer):
    """Right padding + attention mask + M-RoPE: each row's last hidden equals its own forward."""
    root = syn.write_dataset(tmp_path, 2, "image", 2, size=(56, 56), seed=0)
    lines = (root / "examples.jsonl").read_text().splitlines()
    from PIL import Image

    Image.fromarray(syn.make_image(1, np.random.default_rng(1), 56, 112)).save(root / "wide.png")
    wide = {**json.loads(lines[1]), "image": "wide.png", "prompt": "Hi <|image_pad|> which?"}
    (root / "examples.jsonl").write_text(lines[0] + "\n" + json.dumps(wide) + "\n")
    model = make_hf_model(tie_word_embeddings=False)
    _, examples = tr.load_dataset(root)
    encoded = [tr.encode_example(e, tokenizer, model.config) for e in examples]
    assert len(encoded[0]["input_ids"]) != len(encoded[1]["input_ids"])
    with torch.no_grad():
        batched = tr.last_hidden(model, *tr.collate(encoded, torch.device("cpu"))[:2])
        for row, item in enumerate(encoded):
            single = tr.last_hidden(model, *tr.collate([item], torch.device("cpu"))[:2])
            torch.testing.assert_close(batched[row], single[0], rtol=1e-4, atol=1e-5)


def test_training_learns_held_out_images(tmp_path, tokenizer):
    data = syn.write_dataset(tmp_path / "data", 64, "image", 4, size=(56, 56), seed=0)
    cfg = tr.TrainConfig(epochs=15, lr=1e-3, vision_lora=True, seed=0, device="cpu")
    result = tr.train_task_head(make_hf_model(False), tokenizer, data, tmp_path / "out", cfg)
    assert result.num_held_out == 16 and result.train_accuracy >= 0.9
    assert result.held_out_accuracy >= 0.75  # chance: 0.25
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        th.HEAD_CONFIG_FILE,
        th.HEAD_WEIGHTS_FILE,
    }
    adapter = load_peft_adapter(out, "trained", ModelConfig.from_setting("tiny"), max_rank=16)
    assert any(name[0].startswith("visual") for name in adapter.modules)
    assert load_task_head(out, 64).labels == tuple(syn.class_labels("image", 4))
    _check_saved_head_reproduces(out, data, tokenizer)


def _check_saved_head_reproduces(out: Path, data: Path, tokenizer) -> None:
    """HF + PEFT reloaded from disk -> last hidden -> TaskHead == plain reference, and the
    predictions are mostly right (the saved files carry what was learned)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(make_hf_model(False), str(out)).eval()
    _, examples = tr.load_dataset(data)
    encoded = [tr.encode_example(e, tokenizer, model.config) for e in examples[:16]]
    kwargs, last, labels = tr.collate(encoded, torch.device("cpu"))
    with torch.no_grad():
        hidden = tr.last_hidden(model, kwargs, last)
    probs = load_task_head(out, 64)(hidden)
    torch.testing.assert_close(probs, head_reference_probs(hidden, out), rtol=1e-5, atol=1e-6)
    assert (probs.argmax(-1) == labels).float().mean() >= 0.75


def test_video_examples_reach_the_model_as_video(tmp_path, tokenizer):
    """Needs ``valora.video.process_video``; one clip through the HF model with video inputs."""
    pytest.importorskip("valora.video")
    data = syn.write_dataset(tmp_path, 2, "video", 2, frames=8, size=(56, 84), seed=0)
    model = make_hf_model(tie_word_embeddings=False)
    _, examples = tr.load_dataset(data)
    encoded = [tr.encode_example(e, tokenizer, model.config) for e in examples]
    kwargs, last, _ = tr.collate(encoded, torch.device("cpu"))
    assert "pixel_values_videos" in kwargs and "pixel_values" not in kwargs
    assert int((kwargs["mm_token_type_ids"] == 2).sum()) == sum(
        int((e["input_ids"] == model.config.video_token_id).sum()) for e in encoded
    )
    with torch.no_grad():
        assert torch.isfinite(tr.last_hidden(model, kwargs, last)).all()
