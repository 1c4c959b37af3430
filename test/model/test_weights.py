"""Checkpoint loading errors, dummy weights, config shapes and named settings."""

from __future__ import annotations

import json

import pytest
import torch
from hf_reference import make_hf_model, save_checkpoint
from safetensors.torch import save_file

import exp_suite
from valora.config import ModelConfig
from valora.weights import build_model, checkpoint_tensors, load_checkpoint, load_model


def setting_dict(name: str) -> dict:
    return json.loads(json.dumps(dict(exp_suite.MODEL_SETTINGS[name])))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(make_hf_model(tie_word_embeddings=False), path, "original-flat-single")


def rewrite(checkpoint, out, edit) -> str:
    """Copy ``checkpoint`` to ``out`` with its tensors changed by ``edit(dict)``."""
    from safetensors.torch import load_file

    out.mkdir()
    tensors = load_file(str(checkpoint / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text((checkpoint / "config.json").read_text())
    return str(out)


def test_missing_tensor_is_named_with_its_shape(checkpoint, tmp_path):
    path = rewrite(
        checkpoint, tmp_path / "c", lambda t: t.pop("model.layers.1.self_attn.k_proj.weight")
    )
    with pytest.raises(
        ValueError,
        match=r"missing tensor 'model.layers.1.self_attn.k_proj.weight' of shape \(32, 64\)",
    ):
        load_model(path)


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    path = rewrite(checkpoint, tmp_path / "c", lambda t: t.update(extra=torch.zeros(3)))
    with pytest.raises(ValueError, match="unexpected tensor 'extra'"):
        load_model(path)


def test_misshaped_tensor_names_the_expected_shape(checkpoint, tmp_path):
    def shrink(t):
        t["visual.blocks.0.mlp.fc1.weight"] = torch.zeros(10, 32)

    path = rewrite(checkpoint, tmp_path / "c", shrink)
    with pytest.raises(
        ValueError,
        match=r"'visual.blocks.0.mlp.fc1.weight' has shape \(10, 32\), expected \(128, 32\)",
    ):
        load_model(path)


def test_missing_weights_and_unknown_names_are_clear(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(setting_dict("tiny"))))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="neither a model setting nor a checkpoint"):
        load_model("no-such-setting")


def test_round_trip_through_checkpoint_names(tmp_path):
    model = load_model("tiny", seed=3)
    tensors = {k: v.contiguous() for k, v in checkpoint_tensors(model).items()}
    assert "model.layers.0.self_attn.q_proj.weight" in tensors
    assert "model.layers.0.mlp.up_proj.weight" in tensors
    assert "lm_head.weight" in tensors  # tiny has a separate LM head
    save_file(tensors, str(tmp_path / "model.safetensors"))
    fresh = build_model(model.cfg, torch.float32, "cpu")
    load_checkpoint(fresh, tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_tied_model_has_no_head_tensor():
    model = build_model(ModelConfig.from_setting("qwen2-vl-2b"), torch.bfloat16, "meta")
    assert model.lm_head is None and "lm_head.weight" not in checkpoint_tensors(model)


def test_dummy_weights_are_deterministic_and_seeded():
    a, b, c = load_model("tiny", seed=0), load_model("tiny", seed=0), load_model("tiny", seed=1)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "norm" not in name and "ln_q" not in name:
            assert not torch.equal(pa, pc), name


def test_dummy_weights_scale_and_dtype():
    model = load_model("tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    qkv = model.model.layers[0].self_attn.qkv_proj.weight.float()
    assert 0.015 < qkv.std().item() < 0.025
    assert torch.all(model.model.norm.weight == 1)
    assert torch.all(model.visual.blocks[0].norm1.bias == 0)


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2-vl-7b"])
def test_real_settings_have_the_released_dimensions(name):
    cfg = ModelConfig.from_setting(name)
    assert cfg.num_hidden_layers == 28 and cfg.head_dim == 128
    assert cfg.mrope_section == (16, 24, 24)
    assert cfg.vision.depth == 32 and cfg.vision.embed_dim == 1280 and cfg.vision.patch_dim == 1176
    if name == "qwen2-vl-7b":
        assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.intermediate_size) == (3584, 4, 18944)
        assert cfg.vocab_size == 152064 and not cfg.tie_word_embeddings
    else:
        assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.intermediate_size) == (1536, 2, 8960)
        assert cfg.vocab_size == 151936 and cfg.tie_word_embeddings


def test_real_setting_builds_on_meta_without_memory():
    model = build_model(ModelConfig.from_setting("qwen2-vl-7b"), torch.bfloat16, "meta")
    num_params = sum(p.numel() for p in model.parameters())
    assert 8.2e9 < num_params < 8.4e9  # 7.6B text + 0.68B vision


def test_flat_and_nested_config_shapes_agree(checkpoint):
    flat = json.loads((checkpoint / "config.json").read_text())
    nested = make_hf_model(tie_word_embeddings=False).config.to_dict()
    assert "text_config" not in flat and "rope_scaling" in flat
    assert ModelConfig.from_hf_dict(flat) == ModelConfig.from_hf_dict(nested)


def test_bad_configs_are_rejected():
    bad = setting_dict("tiny")
    bad["rope_scaling"] = {"type": "mrope", "mrope_section": [4, 4, 4]}
    with pytest.raises(ValueError, match="mrope_section"):
        ModelConfig.from_hf_dict(bad)
    with pytest.raises(ValueError, match="unknown model setting"):
        ModelConfig.from_setting("qwen2-vl-999b")


@pytest.mark.parametrize(
    "declared",
    [
        {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"},
        {"architectures": ["LlamaForCausalLM"]},
        {"model_type": "llava"},
    ],
)
def test_other_architectures_are_refused_by_name(declared, tmp_path):
    """A config.json of another architecture is refused naming what is served, before any of
    its fields is read (Qwen2.5-VL used to fail on a vision hidden-size check)."""
    config = setting_dict("tiny") | declared
    with pytest.raises(
        ValueError, match="unsupported architecture .*Qwen2VLForConditionalGeneration"
    ):
        ModelConfig.from_hf_dict(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture"):
        ModelConfig.from_path(tmp_path)


def test_configs_without_an_architecture_are_taken_as_qwen2_vl():
    config = setting_dict("tiny")
    config.pop("architectures")
    assert ModelConfig.from_hf_dict(config) == ModelConfig.from_setting("tiny")
