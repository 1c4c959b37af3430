"""The W4A16 / W8A16 Triton GEMM against the torch reference (dequantize, then matmul), on
fresh random weights and activations: group sizes 32 / 128 / -1, act-order g_idx, bits 4 and 8,
M from 1 (decode, split-K) to a few hundred. CPU: the Triton interpreter (fp16/fp32, small
shapes); GPU: bf16 at Qwen2-VL-7B shapes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from valora.quant.reference import dequantize, quantize_rtn  # noqa: E402
from valora.quant.triton_gemm import dequantize_kn, quant_matmul  # noqa: E402

TOL = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def make_weight(n: int, k: int, bits: int, group_size: int, act_order: bool, device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = quantize_rtn(torch.randn(n, k, generator=gen), bits, group_size, sym=False)
    if act_order:  # groups assigned to rows in a shuffled order, as desc_act checkpoints do
        g = torch.arange(k, dtype=torch.int32) // w.group_size
        w.g_idx = g[torch.randperm(k, generator=gen)].contiguous()
    return w.to(device)


def check(m, n, k, bits, group_size, act_order, dtype, device, config=None):
    w = make_weight(n, k, bits, group_size, act_order, device, seed=m + n + k + bits)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(device, dtype)
    want = x.float() @ dequantize(w, torch.float32).t()
    got = quant_matmul(x, w, config)
    assert got.dtype == dtype and got.shape == (m, n)
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err < TOL[dtype], f"relative error {err:.2e}"


CPU_CASES = [  # m, n, k, bits, group_size, act_order
    (1, 64, 256, 4, 128, False),
    (3, 96, 256, 4, 32, True),
    (17, 64, 128, 8, 64, False),
    (5, 64, 192, 4, -1, False),
    (2, 80, 256, 8, 128, True),
]


def cpu_config(kernel: str, split_k: int, unpack: str) -> dict:
    return {
        "kernel": kernel,
        "BLOCK_M": 16,
        "BLOCK_N": 32,
        "BLOCK_K": 32,
        "SPLIT_K": split_k,
        "UNPACK": unpack,
        "num_warps": 4,
        "num_stages": 1,
    }


@pytest.mark.parametrize("m, n, k, bits, group_size, act_order", CPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("unpack", ["planes", "reshape"])
def test_qgemm_cpu_interpreter(m, n, k, bits, group_size, act_order, dtype, unpack):
    if torch.cuda.is_available():
        pytest.skip("the GPU variant covers it")
    kernel = "gemv" if m == 1 else "dot"
    check(m, n, k, bits, group_size, act_order, dtype, "cpu", cpu_config(kernel, 3, unpack))
    check(m, n, k, bits, group_size, act_order, dtype, "cpu", cpu_config(kernel, 1, unpack))


def test_split_k_counters_are_reset():
    """The last split of each tile resets its counter: calls in a row stay correct."""
    if torch.cuda.is_available():
        pytest.skip("the GPU variant covers it")
    from valora.quant.triton_gemm import _COUNTERS

    for _ in range(2):
        check(2, 64, 256, 4, 128, False, torch.float32, "cpu", cpu_config("dot", 4, "planes"))
        assert all(int(c.abs().sum()) == 0 for c in _COUNTERS.values())


def test_gemv_config_refuses_several_rows():
    w = make_weight(32, 64, 4, 32, False, "cpu", seed=0)
    with pytest.raises(ValueError, match="one row"):
        quant_matmul(torch.randn(2, 64), w, cpu_config("gemv", 1, "planes"))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 16, 32, 64, 256])
@pytest.mark.parametrize("n, k", [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)])
@pytest.mark.parametrize("bits", [4, 8])
def test_qgemm_gpu_bf16(m, n, k, bits):
    check(m, n, k, bits, 128, False, torch.bfloat16, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("group_size, act_order", [(128, True), (-1, False), (32, False)])
def test_qgemm_gpu_groupings(group_size, act_order):
    check(8, 4608, 3584, 4, group_size, act_order, torch.bfloat16, "cuda")


@pytest.mark.parametrize(
    "bits, group_size, act_order", [(4, 32, False), (8, 64, True), (4, -1, False)]
)
def test_dequantize_kernel_matches_reference(bits, group_size, act_order):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    w = make_weight(96, 256, bits, group_size, act_order, device, seed=bits)
    got = dequantize_kn(w, torch.float32)
    assert torch.allclose(got, dequantize(w, torch.float32).t(), atol=1e-6)


@pytest.mark.gpu
def test_tuned_table_entries_are_correct():
    """Every entry of this GPU's shipped table (the configs the engine runs) on its own shape."""
    from valora.quant.config_table import _table

    table = _table(torch.cuda.get_device_name(), torch.bfloat16)
    if not table:
        pytest.skip("no tuned table for this GPU")
    for key, config in table.items():
        bits, n, k, m = (int(part[1:]) for part in key.split("|"))
        check(m, n, k, bits, 128, False, torch.bfloat16, "cuda", config)


def test_untuned_default_is_one_config_per_m_bucket(monkeypatch):
    """Every M of a bucket gets the bucket's config (else each new batch size would compile a
    new kernel); M = 1 keeps the gemv."""
    from valora.quant import config_table

    monkeypatch.setattr(config_table, "device_name", lambda device: "a gpu with no table")
    monkeypatch.setattr(config_table, "_num_sms", lambda device: 132)
    config_table.get_config.cache_clear()
    gpu = torch.device("cuda")  # only its type is read
    try:
        assert config_table.get_config(1, 4608, 3584, 4, torch.bfloat16, gpu)["kernel"] == "gemv"
        previous = 1
        for bucket in config_table.M_BUCKETS[1:]:
            configs = [
                config_table.get_config(m, 4608, 3584, 4, torch.bfloat16, gpu)
                for m in range(previous + 1, bucket + 1)
            ]
            assert all(c == configs[-1] for c in configs), bucket
            assert configs[-1] == config_table.default_config(bucket, 4608, 3584, 132)
            previous = bucket
    finally:
        config_table.get_config.cache_clear()
