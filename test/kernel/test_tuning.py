"""Adaptive tiling: bucket keys, table lookup with fallback, and the tuner's fused decision."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from atmm import tuning  # noqa: E402
from atmm.tune import _fused_or_separate  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "CONFIG_DIR", tmp_path)
    for cached in (tuning._table, tuning.get_config, tuning.fused_config):
        cached.cache_clear()
    yield tmp_path
    for cached in (tuning._table, tuning.get_config, tuning.fused_config):
        cached.cache_clear()


def test_bucket_key_rounds_up_to_powers_of_two():
    assert tuning.bucket_key("shrink", 3, 5, 3584, 1, 64) == "shrink|m4|s8|d3584|l1|r64"
    assert tuning.bucket_key("expand", 1, 1, 512, 3, 128) == "expand|m1|s1|d512|l3|r128"


def test_lookup_uses_the_table_and_falls_back_to_the_default(table_dir):
    tuned = {"path": "gemv", "BLOCK_K": 64, "BLOCK_R": 16, "SPLIT_K": 2, "num_warps": 4,
             "num_stages": 1, "us": 3.0}  # fmt: skip
    fused = {"path": "fused", "BLOCK_M": 16, "BLOCK_K": 32, "BLOCK_N": 16, "N_TILES": 1,
             "num_warps": 4, "num_stages": 1}  # fmt: skip
    configs = {
        tuning.bucket_key("shrink", 2, 3, 32, 1, 16): tuned,
        tuning.bucket_key("fused", 2, 3, "32x16", 1, 16): fused,
        tuning.bucket_key("fused", 2, 9, "32x16", 1, 16): {"path": "separate"},
    }
    path = tuning.table_path("cpu", torch.float32)
    path.write_text(json.dumps({"configs": configs}))
    assert tuning.get_config("shrink", 2, 3, 32, 1, 16, torch.float32, CPU) == tuned
    other = tuning.get_config("shrink", 64, 3, 32, 1, 16, torch.float32, CPU)
    assert other == tuning.default_config("shrink", 64, 3, 32, 1, 16, CPU)
    assert tuning.fused_config(2, 3, 32, 16, 1, 16, torch.float32, CPU) == fused
    assert tuning.fused_config(2, 9, 32, 16, 1, 16, torch.float32, CPU) is None  # lost
    assert tuning.fused_config(2, 3, 32, 16, 1, 16, torch.float16, CPU) is None  # no table


def test_tuner_keeps_the_fused_kernel_only_where_it_beats_the_pair():
    table = {tuning.bucket_key("shrink", 1, 4, 64, 1, 16): {"us": 5.0},
             tuning.bucket_key("expand", 1, 4, 48, 1, 16): {"us": 4.0}}  # fmt: skip
    config = {"path": "fused", "BLOCK_M": 16}
    assert _fused_or_separate(table, config, 0.008, 64, [48], 16, 1, 4) == config
    assert _fused_or_separate(table, config, 0.010, 64, [48], 16, 1, 4)["path"] == "separate"
    assert _fused_or_separate({}, config, 0.001, 64, [48], 16, 1, 4)["path"] == "separate"
