"""Adaptive tiling: bucket keys, table lookup with fallback, and the tuner's fused decision."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from atmm import config_table  # noqa: E402
from atmm.tuner import _fused_or_separate  # noqa: E402
from kernel_tables import pow2_ceil  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config_table, "CONFIG_DIR", tmp_path)
    for cached in (config_table._table, config_table.get_config, config_table.fused_config):
        cached.cache_clear()
    yield tmp_path
    for cached in (config_table._table, config_table.get_config, config_table.fused_config):
        cached.cache_clear()


def test_bucket_key_rounds_up_to_powers_of_two():
    assert config_table.bucket_key("shrink", 3, 5, 3584, 1, 64) == "shrink|m4|s8|d3584|l1|r64"
    assert config_table.bucket_key("expand", 1, 1, 512, 3, 128) == "expand|m1|s1|d512|l3|r128"


def test_lookup_uses_the_table_and_falls_back_to_the_default(table_dir):
    tuned = {
        "path": "gemv",
        "BLOCK_K": 64,
        "BLOCK_R": 16,
        "SPLIT_K": 2,
        "num_warps": 4,
        "num_stages": 1,
        "us": 3.0,
    }
    fused = {
        "path": "fused",
        "BLOCK_M": 16,
        "BLOCK_K": 32,
        "BLOCK_N": 16,
        "N_TILES": 1,
        "num_warps": 4,
        "num_stages": 1,
    }
    configs = {
        config_table.bucket_key("shrink", 2, 3, 32, 1, 16): tuned,
        config_table.bucket_key("fused", 2, 3, "32x16", 1, 16): fused,
        config_table.bucket_key("fused", 2, 9, "32x16", 1, 16): {"path": "separate"},
    }
    path = config_table.table_path("cpu", torch.float32)
    path.write_text(json.dumps({"configs": configs}))
    assert config_table.get_config("shrink", 2, 3, 32, 1, 16, torch.float32, CPU) == tuned
    other = config_table.get_config("shrink", 64, 3, 32, 1, 16, torch.float32, CPU)
    # the bucket's corner
    assert other == config_table.default_config("shrink", 64, 4, 32, 1, 16, CPU)
    assert config_table.fused_config(2, 3, 32, 16, 1, 16, torch.float32, CPU) == fused
    assert config_table.fused_config(2, 9, 32, 16, 1, 16, torch.float32, CPU) is None  # lost
    assert config_table.fused_config(2, 3, 32, 16, 1, 16, torch.float16, CPU) is None  # no table


def test_tuner_keeps_the_fused_kernel_only_where_it_beats_the_pair():
    table = {
        config_table.bucket_key("shrink", 1, 4, 64, 1, 16): {"us": 5.0},
        config_table.bucket_key("expand", 1, 4, 48, 1, 16): {"us": 4.0},
    }
    config = {"path": "fused", "BLOCK_M": 16}
    assert _fused_or_separate(table, config, 0.008, 64, [48], 16, 1, 4) == config
    assert _fused_or_separate(table, config, 0.010, 64, [48], 16, 1, 4)["path"] == "separate"
    assert _fused_or_separate({}, config, 0.001, 64, [48], 16, 1, 4)["path"] == "separate"


def test_the_default_is_one_config_per_bucket(table_dir, monkeypatch):
    """Untuned shapes on a GPU: every call of a bucket gets the same config (else Triton would
    compile a new kernel per segment count), and it differs between buckets where it should."""
    monkeypatch.setattr(config_table, "device_name", lambda device: "a gpu with no table")
    gpu = torch.device("cuda")  # only its type is read
    for op, dim in (("shrink", 3584), ("expand", 4608)):
        for m, s in ((1, 5), (3, 17), (100, 3), (700, 2)):
            bucket = config_table.get_config(op, m, s, dim, 3, 64, torch.bfloat16, gpu)
            corner = config_table.default_config(op, pow2_ceil(m), pow2_ceil(s), dim, 3, 64, gpu)
            assert bucket == corner
            for m2 in range(pow2_ceil(m) // 2 + 1, pow2_ceil(m) + 1):
                assert config_table.get_config(op, m2, s, dim, 3, 64, torch.bfloat16, gpu) == bucket
    # split-K follows the bucket's segment count (more segments, fewer splits)
    few = config_table.get_config("shrink", 1, 1, 3584, 1, 64, torch.bfloat16, gpu)
    many = config_table.get_config("shrink", 1, 64, 3584, 1, 64, torch.bfloat16, gpu)
    assert few["SPLIT_K"] > many["SPLIT_K"]


def test_the_tuner_covers_every_lora_target_shape_of_both_models():
    """Each (K, output slices) the engine's LoRA pool can hold is a tuning job, so no served
    shape is left to the default by omission."""
    from atmm.tuner import MODEL_TARGETS
    from exp_suite import MODEL_SETTINGS
    from valora.adapters.targets import model_targets
    from valora.config import ModelConfig

    for name in ("qwen2-vl-7b", "qwen2-vl-2b"):
        cfg = ModelConfig.from_hf_dict(dict(MODEL_SETTINGS[name]))
        served = {(t.in_features, tuple(t.slice_sizes)) for t in model_targets(cfg)}
        tuned = {(k, tuple(slices)) for k, slices in MODEL_TARGETS[name]}
        assert served <= tuned, served - tuned


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["shrink", "expand", "fused"])
def test_the_tuner_times_a_bucket_and_skips_configs_the_gpu_cannot_run(op):
    from atmm.tuner import bucket_runner, time_config, tune_bucket

    candidates, run = bucket_runner(op, 256, [128, 64], 16, 32, 3, torch.float16)
    best, best_ms = tune_bucket(candidates[:4], run)
    assert best in candidates[:4] and 0 < best_ms < 1e3
    # tile paths: one pipeline stage of these blocks alone needs more shared memory than any GPU
    too_big = dict(best, BLOCK_M=256, BLOCK_N=256, BLOCK_K=256, num_stages=8)
    assert time_config(run, too_big) == float("inf")
    assert tune_bucket([too_big], run) == (None, float("inf"))
