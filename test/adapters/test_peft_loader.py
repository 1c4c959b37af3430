"""PEFT adapter loading against real PEFT adapters of transformers' tiny Qwen2-VL."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_reference import make_hf_model
from safetensors.torch import load_file, save_file

from valora.adapters.peft_loader import dummy_adapter, dummy_ranks, load_peft_adapter
from valora.adapters.targets import model_targets
from valora.config import ModelConfig

peft = pytest.importorskip("peft")
from peft.tuners.lora import LoraLayer  # noqa: E402

LM = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION = ["attn.qkv", "attn.proj", "fc1", "fc2", "merger.mlp.0", "merger.mlp.2"]
# PEFT module suffix -> (our target, slice index)
SLICES = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
    "down_proj": ("down_proj", 0),
    "attn.qkv": ("visual.qkv", 0),
    "attn.proj": ("visual.proj", 0),
    "fc1": ("visual.fc1", 0),
    "fc2": ("visual.fc2", 0),
    "merger.mlp.0": ("merger.0", 0),
    "merger.mlp.2": ("merger.2", 0),
}
Q0 = "base_model.model.model.language_model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model(tie_word_embeddings=False)


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig.from_setting("tiny")


def make_peft(hf_model, out: Path, **kwargs):
    """Save a real PEFT adapter (random A and B) to ``out``; returns the PEFT model."""
    torch.manual_seed(1)
    config = peft.LoraConfig(init_lora_weights=False, **kwargs)
    model = peft.get_peft_model(copy.deepcopy(hf_model), config)
    model.save_pretrained(str(out))
    return model


def edit_adapter(
    src: Path,
    dst: Path,
    tensors_fn: Callable[[dict], dict | None] | None = None,
    config_fn: Callable[[dict], None] | None = None,
) -> Path:
    """Copy an adapter directory, editing its tensors and/or config."""
    shutil.copytree(src, dst)
    if tensors_fn is not None:
        tensors = load_file(str(dst / "adapter_model.safetensors"))
        tensors = tensors_fn(tensors) or tensors
        save_file(tensors, str(dst / "adapter_model.safetensors"))
    if config_fn is not None:
        config = json.loads((dst / "adapter_config.json").read_text())
        config_fn(config)
        (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


def where(path: str) -> tuple[str, int, int]:
    """A PEFT module path -> (target, layer, slice), independent of the loader."""
    suffix = next(s for s in SLICES if path.endswith("." + s))
    layer = re.search(r"\.(?:layers|blocks)\.(\d+)\.", path)
    return (*SLICES[suffix][:1], int(layer[1]) if layer else 0, SLICES[suffix][1])


def assert_matches_peft(adapter, peft_model, cfg: ModelConfig) -> None:
    specs = {spec.name: spec for spec in model_targets(cfg)}
    trained: dict[tuple[str, int], set[int]] = {}
    for path, module in peft_model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        target, layer, index = where(path)
        spec = specs[target]
        lo, hi = spec.slice_offsets[index], spec.slice_offsets[index + 1]
        ours = adapter.modules[(target, layer)].delta_weight(spec.slice_offsets)[lo:hi]
        expected = module.get_delta_weight("default").float()  # [N_s, K]
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
        trained.setdefault((target, layer), set()).add(index)
    assert trained and set(adapter.modules) == set(trained)
    for (target, layer), slices in trained.items():
        spec, module = specs[target], adapter.modules[(target, layer)]
        delta = module.delta_weight(spec.slice_offsets)
        for index in set(range(len(spec.slice_sizes))) - slices:
            lo, hi = spec.slice_offsets[index], spec.slice_offsets[index + 1]
            assert torch.count_nonzero(delta[lo:hi]) == 0
            assert torch.count_nonzero(module.a[index]) == 0


def original_layout(tensors: dict) -> dict:
    """Keys as saved with transformers < 4.52: model.layers..., visual..."""
    renamed = {}
    for key, value in tensors.items():
        key = key.replace("base_model.model.model.language_model.", "base_model.model.model.")
        renamed[key.replace("base_model.model.model.visual.", "base_model.model.visual.")] = value
    return renamed


def named_layout(tensors: dict) -> dict:
    """Keys with the adapter name kept: ...lora_A.default.weight"""
    return {
        re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k): v for k, v in tensors.items()
    }


CASES = {
    "plain": dict(r=8, lora_alpha=16, target_modules=LM + VISION),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=LM),
    "patterns": dict(
        r=8,
        lora_alpha=16,
        target_modules=LM,
        rank_pattern={"q_proj": 4, "down_proj": 2},
        alpha_pattern={"v_proj": 5, "layers.1.mlp.up_proj": 3},
    ),
    "q_and_v": dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    "vision_only": dict(r=4, lora_alpha=12, target_modules=VISION),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_peft_in_every_layout(case, hf_model, cfg, tmp_path):
    peft_model = make_peft(hf_model, tmp_path / "saved", **CASES[case])
    layouts = {
        "saved": tmp_path / "saved",
        "original": edit_adapter(tmp_path / "saved", tmp_path / "original", original_layout),
        "named": edit_adapter(tmp_path / "saved", tmp_path / "named", named_layout),
    }
    for layout, path in layouts.items():
        adapter = load_peft_adapter(path, f"{case}-{layout}", cfg, max_rank=16)
        assert_matches_peft(adapter, peft_model, cfg)
        assert adapter.name == f"{case}-{layout}"
        assert adapter.rank == CASES[case]["r"]
    if case == "q_and_v":
        assert {t for t, _ in adapter.modules} == {"qkv_proj"}
        assert torch.count_nonzero(adapter.modules[("qkv_proj", 0)].a[1]) == 0
    if case == "vision_only":
        assert adapter.towers == {"vision"} and ("merger.2", 0) in adapter.modules
    if case == "patterns":  # q (4, alpha 16), k (8, 16), v (8, 5): scalings folded into b
        qkv = adapter.modules[("qkv_proj", 0)]
        assert qkv.scaling == 1.0 and qkv.rank == 8 and torch.count_nonzero(qkv.a[0, 4:]) == 0
        assert adapter.modules[("down_proj", 1)].rank == 2
    if case == "plain":
        assert adapter.modules[("o_proj", 0)].scaling == 2.0


def test_dtype_and_layout_of_tensors(hf_model, cfg, tmp_path):
    make_peft(hf_model, tmp_path, r=4, lora_alpha=8, target_modules=LM)
    adapter = load_peft_adapter(tmp_path, "a", cfg, max_rank=8, dtype=torch.bfloat16)
    for module in adapter.modules.values():
        assert module.a.dtype == module.b.dtype == torch.bfloat16
        assert module.a.is_contiguous() and module.b.is_contiguous()
        assert module.a.device.type == "cpu"
    gate_up = adapter.modules[("gate_up_proj", 1)]
    assert gate_up.a.shape == (2, 4, cfg.hidden_size)
    assert gate_up.b.shape == (4, 2 * cfg.intermediate_size)


@pytest.fixture(scope="module")
def base_adapter(hf_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base")
    make_peft(hf_model, out, r=4, lora_alpha=8, target_modules=LM + VISION)
    return out


def _set(key: str, value):
    return lambda d: d.__setitem__(key, value)


def _drop(key: str):
    return lambda d: d.__delitem__(key)


def _nan(t: dict) -> None:
    t[f"{Q0}.lora_B.weight"][3, 1] = float("nan")


def _layer_out_of_range(t: dict) -> dict:
    return {k.replace(".layers.1.", ".layers.7."): v for k, v in t.items()}


TENSOR_EDITS = {
    "modules_to_save copy": (
        _set("base_model.model.lm_head.weight", torch.zeros(2, 2)),
        "modules_to_save",
    ),
    "shape": (
        _set(f"{Q0}.lora_A.weight", torch.randn(4, 65)),
        r"q_proj.lora_A: shape \(4, 65\) .* expected \(4, 64\)",
    ),
    "nan": (_nan, r"q_proj.lora_B contains NaN"),
    "unsupported target": (
        lambda t: t.update(
            {
                "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64),
                "base_model.model.lm_head.lora_B.weight": torch.zeros(8, 4),
            }
        ),
        r"'lm_head' is not a supported LoRA target; supported modules: .*self_attn.q_proj",
    ),
    "missing lora_B": (_drop(f"{Q0}.lora_B.weight"), "has lora_A but no lora_B"),
    "A/B rank": (_set(f"{Q0}.lora_B.weight", torch.zeros(64, 3)), "lora_A rank 4 != lora_B rank 3"),
    "layer": (_layer_out_of_range, "layer 7 out of range"),
    "embedding": (
        _set(
            "base_model.model.model.language_model.embed_tokens.lora_embedding_A", torch.zeros(4, 8)
        ),
        "embedding LoRA",
    ),
    "dora key": (_set(f"{Q0}.lora_magnitude_vector", torch.ones(64)), "DoRA"),
    "lora bias": (_set(f"{Q0}.lora_B.bias", torch.zeros(64)), "biases are not supported"),
}
CONFIG_EDITS = {
    "modules_to_save": (_set("modules_to_save", ["lm_head"]), "modules_to_save"),
    "rank_pattern": (_set("rank_pattern", {"q_proj": 2}), "rank 2 .* disagrees .* rank 4"),
    "fan_in_fan_out": (_set("fan_in_fan_out", True), "fan_in_fan_out"),
    "peft_type": (_set("peft_type", "IA3"), "LORA only"),
    "use_dora": (_set("use_dora", True), "DoRA"),
}


@pytest.mark.parametrize("edit", TENSOR_EDITS)
def test_rejects_bad_tensors(edit, base_adapter, cfg, tmp_path):
    tensors_fn, message = TENSOR_EDITS[edit]
    path = edit_adapter(base_adapter, tmp_path / "bad", tensors_fn=tensors_fn)
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(path, "bad", cfg, max_rank=16)


@pytest.mark.parametrize("edit", CONFIG_EDITS)
def test_rejects_bad_config(edit, base_adapter, cfg, tmp_path):
    config_fn, message = CONFIG_EDITS[edit]
    path = edit_adapter(base_adapter, tmp_path / "bad", config_fn=config_fn)
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(path, "bad", cfg, max_rank=16)


def test_rejects_rank_above_max(base_adapter, cfg):
    with pytest.raises(ValueError, match="rank 4 exceeds max_rank 2"):
        load_peft_adapter(base_adapter, "a", cfg, max_rank=2)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"use_dora": True}, "DoRA"), ({"bias": "all"}, "bias='all'")]
)
def test_rejects_real_peft_variants(kwargs, message, hf_model, cfg, tmp_path):
    make_peft(hf_model, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj", "qkv"], **kwargs)
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(tmp_path, "a", cfg, max_rank=16)


def test_pickled_adapter_needs_opt_in(hf_model, cfg, tmp_path):
    peft_model = make_peft(hf_model, tmp_path, r=4, lora_alpha=8, target_modules=LM + VISION)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    torch.save(tensors, tmp_path / "adapter_model.bin")
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="allow_pickle"):
        load_peft_adapter(tmp_path, "a", cfg, max_rank=16)
    adapter = load_peft_adapter(tmp_path, "a", cfg, max_rank=16, allow_pickle=True)
    assert_matches_peft(adapter, peft_model, cfg)


def test_missing_files(base_adapter, cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_peft_adapter(tmp_path / "nowhere", "a", cfg, max_rank=16)
    shutil.copy(base_adapter / "adapter_config.json", tmp_path / "adapter_config.json")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_peft_adapter(tmp_path, "a", cfg, max_rank=16)
    weights_only = edit_adapter(base_adapter, tmp_path / "no_config")
    (weights_only / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft_adapter(weights_only, "a", cfg, max_rank=16)


def test_dummy_adapter(cfg):
    first = dummy_adapter("d", cfg, rank=8, seed=3)
    again, other = dummy_adapter("d", cfg, rank=8, seed=3), dummy_adapter("d", cfg, rank=8, seed=4)
    expected = {(s.name, i) for s in model_targets(cfg) for i in range(s.num_layers)}
    assert set(first.modules) == expected and first.towers == {"language", "vision"}
    for key, spec in ((k, next(s for s in model_targets(cfg) if s.name == k[0])) for k in expected):
        module = first.modules[key]
        assert module.a.shape == (len(spec.slice_sizes), 8, spec.in_features)
        assert module.b.shape == (8, spec.out_features) and module.scaling == 2.0
        assert torch.equal(module.a, again.modules[key].a)
        assert torch.equal(module.b, again.modules[key].b)
        assert not torch.equal(module.b, other.modules[key].b)
        assert torch.count_nonzero(module.delta_weight(spec.slice_offsets)) > 0
    lm_only = dummy_adapter("l", cfg, rank=4, seed=0, dtype=torch.float16, towers=("language",))
    assert lm_only.towers == {"language"} and lm_only.rank == 4
    assert all(m.a.dtype == torch.float16 for m in lm_only.modules.values())


def test_dummy_ranks():
    assert dummy_ranks(6) == [8, 16, 32, 64, 8, 16]
    assert dummy_ranks(3, ranks=(4,)) == [4, 4, 4]
    assert dummy_ranks(0) == []
