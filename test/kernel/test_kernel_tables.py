"""kernel_tables' pure helpers: bucket rounding, table file names, reading and writing tables,
and the GPU timer's clear refusal without CUDA."""

from __future__ import annotations

import json

import pytest
import torch

import kernel_tables
from kernel_tables import timing


def test_pow2_ceil():
    assert [kernel_tables.pow2_ceil(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 4096, 4097)] == [
        1,
        1,
        2,
        4,
        4,
        8,
        8,
        16,
        4096,
        8192,
    ]


def test_table_file_names_the_shipped_tables(tmp_path):
    """GPU names slug to the file names the shipped tables have."""
    path = kernel_tables.table_file(tmp_path, "NVIDIA H100 80GB HBM3", torch.bfloat16)
    assert path == tmp_path / "nvidia_h100_80gb_hbm3__bfloat16.json"
    assert kernel_tables.table_file(tmp_path, "NVIDIA H200", torch.float16).name == (
        "nvidia_h200__float16.json"
    )
    from atmm import config_table as atmm_table
    from valora.quant import config_table as quant_table

    for owner in (atmm_table, quant_table):
        assert owner.table_path("NVIDIA H100 80GB HBM3", torch.bfloat16).exists()


def test_tables_round_trip_sorted_with_versions(tmp_path):
    path = tmp_path / "new" / "gpu__bfloat16.json"
    assert kernel_tables.read_table(path) == {}  # no file: no entries
    configs = {"b|m2": {"BLOCK_K": 64}, "a|m1": {"BLOCK_K": 32, "us": 1.5}}
    kernel_tables.write_table(path, "Some GPU", "bfloat16", configs)
    assert kernel_tables.read_table(path) == configs
    record = json.loads(path.read_text())
    assert record["gpu"] == "Some GPU" and record["dtype"] == "bfloat16"
    assert record["torch"] == torch.__version__ and "triton" in record
    assert list(record["configs"]) == ["a|m1", "b|m2"]


def test_device_name_and_library_versions():
    assert kernel_tables.device_name(torch.device("cpu")) == "cpu"
    versions = kernel_tables.library_versions("torch", "no-such-distribution-here")
    assert versions == {"torch": torch.__version__, "no-such-distribution-here": None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_time_refuses_clearly_without_cuda():
    calls = []
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        timing.gpu_time(lambda: calls.append(1))
    assert calls == []  # nothing ran


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph,flush_l2", [(True, True), (True, False), (False, True)])
def test_gpu_time_measures_a_copy(cuda_graph, flush_l2):
    src = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = timing.gpu_time(
        lambda: dst.copy_(src), reps=5, cuda_graph=cuda_graph, flush_l2=flush_l2
    )
    assert 0 < seconds < 0.1
