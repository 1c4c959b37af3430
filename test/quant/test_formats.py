"""GPTQ / AWQ conversion, packing and round-to-nearest quantization against hand-built tensors."""

from __future__ import annotations

import pytest
import torch

from valora.quant.formats import (
    QuantSpec,
    from_awq,
    from_gptq,
    parse_quant_config,
    to_awq,
    to_gptq,
)
from valora.quant.reference import dequantize, pack_rows, quantize_rtn, unpack_rows
from valora.quant.types import QuantizedWeight


def _word(nibbles: list[int]) -> int:
    """Eight 4-bit values, slot 0 in the lowest bits, as a signed int32 Python int."""
    value = sum(v << (4 * s) for s, v in enumerate(nibbles))
    return value - (1 << 32) if value >= 1 << 31 else value


def _random_qweight(n: int, k: int, bits: int, groups: int, seed: int = 0) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    maxq = (1 << bits) - 1
    q = torch.randint(0, maxq + 1, (k, n), generator=gen, dtype=torch.int32)  # [K, N]
    zeros = torch.randint(0, maxq + 1, (groups, n), generator=gen, dtype=torch.int32)  # [G, N]
    scales = (torch.rand(groups, n, generator=gen) * 0.1 + 0.01).half()  # [G, N]
    return QuantizedWeight(pack_rows(q, bits), scales, zeros, None, bits, k // groups)


def _assert_same(a: QuantizedWeight, b: QuantizedWeight) -> None:
    assert torch.equal(a.qweight, b.qweight)
    assert torch.equal(a.zeros, b.zeros)
    assert torch.equal(a.scales, b.scales)
    assert (a.g_idx is None) == (b.g_idx is None)
    if a.g_idx is not None:
        assert torch.equal(a.g_idx, b.g_idx)
    assert (a.bits, a.group_size) == (b.bits, b.group_size)


# --- packing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits: int) -> None:
    maxq = (1 << bits) - 1
    q = torch.randint(0, maxq + 1, (64, 24), generator=torch.Generator().manual_seed(1))
    q[:8] = maxq  # all-max words: the top code sets the int32 sign bit
    q[8:16] = 0
    q[16:24, 0] = torch.arange(8) % (maxq + 1)
    packed = pack_rows(q, bits)
    assert packed.dtype == torch.int32 and packed.shape == (64 * bits // 32, 24)
    assert (packed[: 8 * bits // 32] == -1).all()  # every bit set
    assert torch.equal(unpack_rows(packed, bits), q.to(torch.int32))


def test_gptq_qweight_hand_built() -> None:
    # qweight[r, n] holds input rows 8r .. 8r+7 of column n, row 8r+i in bits 4i..4i+3
    col0, col1 = [1, 2, 3, 4, 5, 6, 7, 15], [15, 0, 9, 8, 0, 0, 0, 12]
    qweight = torch.tensor([[_word(col0), _word(col1)]], dtype=torch.int32)  # [K/8=1, N=2]
    assert qweight[0, 0].item() == 0xF7654321 - (1 << 32)  # top nibble 15: negative int32
    q = unpack_rows(qweight, 4)  # [K=8, N=2]
    assert q[:, 0].tolist() == col0 and q[:, 1].tolist() == col1
    assert torch.equal(pack_rows(q, 4), qweight)


def test_8bit_hand_built() -> None:
    word = 0x11 | (0x22 << 8) | (0x33 << 16) | (0xFE << 24)  # rows 0..3, row 0 lowest byte
    qweight = torch.tensor([[word - (1 << 32)]], dtype=torch.int32)
    assert unpack_rows(qweight, 8)[:, 0].tolist() == [0x11, 0x22, 0x33, 0xFE]


# --- GPTQ --------------------------------------------------------------------------------------


def _gptq_zero_case(stored: list[int], fmt: str) -> torch.Tensor:
    """K=8, N=8, one group: qzeros word built from ``stored`` nibbles (column n in slot n)."""
    qweight = pack_rows(torch.full((8, 8), 8, dtype=torch.int32), 4)  # all codes 8
    qzeros = torch.tensor([[_word(stored)]], dtype=torch.int32)  # [G=1, N/8=1]
    scales = torch.ones(1, 8, dtype=torch.float16)
    return from_gptq(qweight, qzeros, scales, None, 4, -1, fmt).zeros[0]


def test_gptq_v1_vs_v2_zeros() -> None:
    stored = [7, 0, 1, 14, 15, 3, 7, 8]
    # v1 stores z - 1 masked to 4 bits: symmetric 7 -> 8, and 15 (written for z = 0) -> 0
    assert _gptq_zero_case(stored, "gptq").tolist() == [8, 1, 2, 15, 0, 4, 8, 9]
    assert _gptq_zero_case(stored, "gptq_v2").tolist() == stored


def test_gptq_v1_dequant_symmetric() -> None:
    q = torch.tensor([0, 8, 15, 3, 8, 8, 8, 8]).view(8, 1).repeat(1, 8)  # [K=8, N=8]
    w = from_gptq(
        pack_rows(q, 4),  # [1, 8]
        torch.tensor([[0x77777777]], dtype=torch.int32),  # [G=1, N/8=1], stored 7 -> z = 8
        torch.full((1, 8), 0.5, dtype=torch.float16),
        torch.zeros(8, dtype=torch.int32),
        bits=4,
        group_size=-1,
    )
    assert w.g_idx is None and w.group_size == 8
    assert dequantize(w)[5].tolist() == [-4.0, 0.0, 3.5, -2.5, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_round_trip(bits: int, fmt: str) -> None:
    w = _random_qweight(n=32, k=64, bits=bits, groups=4)
    w.zeros[0, :4] = torch.tensor([0, 1, (1 << bits) - 1, 1 << (bits - 1)])  # wrap-around edges
    tensors = to_gptq(w, fmt)
    assert tensors["qzeros"].shape == (4, 32 * bits // 32)
    assert torch.equal(tensors["g_idx"], (torch.arange(64) // 16).int())
    back = from_gptq(**tensors, bits=bits, group_size=16, checkpoint_format=fmt)
    _assert_same(back, w)


def test_gptq_desc_act_g_idx() -> None:
    k, n, gs = 32, 8, 8
    w = _random_qweight(n=n, k=k, bits=4, groups=k // gs, seed=3)
    g_idx = (torch.randperm(k, generator=torch.Generator().manual_seed(4)) // gs).int()
    w.g_idx = g_idx
    back = from_gptq(**to_gptq(w), bits=4, group_size=gs)
    assert back.g_idx is not None and torch.equal(back.g_idx, g_idx)
    dq = dequantize(back)  # [N, K]
    q = unpack_rows(w.qweight, 4)
    for row in range(k):  # direct per-row computation with the row's own group
        g = int(g_idx[row])
        expected = (q[row].float() - w.zeros[g].float()) * w.scales[g].float()
        assert torch.equal(dq[:, row], expected)


def test_gptq_rejects() -> None:
    w = _random_qweight(n=8, k=8, bits=4, groups=1)
    with pytest.raises(ValueError, match="marlin"):
        to_gptq(w, "marlin")
    with pytest.raises(ValueError, match="qzeros"):  # N=1: qzeros cannot hold N/8 words
        from_gptq(
            torch.zeros(1, 1, dtype=torch.int32),
            torch.zeros(1, 1, dtype=torch.int32),
            torch.ones(1, 1),
            None,
            bits=4,
            group_size=-1,
        )


# --- AWQ ---------------------------------------------------------------------------------------


def test_awq_interleave_hand_built() -> None:
    # AutoAWQ packs column AWQ_ORDER[s] = [0, 2, 4, 6, 1, 3, 5, 7][s] into slot s (bits 4s..)
    columns = [10, 11, 12, 13, 14, 15, 1, 2]  # natural column values 0..7
    slots = [columns[c] for c in (0, 2, 4, 6, 1, 3, 5, 7)]  # [10, 12, 14, 1, 11, 13, 15, 2]
    word = _word(slots)
    qweight = torch.tensor([[word]] * 8, dtype=torch.int32)  # [K=8, N/8=1]
    # zero of column j is j: slot s holds column AWQ_ORDER[s], i.e. the value AWQ_ORDER[s]
    qzeros = torch.tensor([[_word([0, 2, 4, 6, 1, 3, 5, 7])]], dtype=torch.int32)  # [G=1, 1]
    scales = torch.ones(1, 8, dtype=torch.float16)
    w = from_awq(qweight, qzeros, scales, bits=4, group_size=-1)
    q = unpack_rows(w.qweight, 4)  # [K, N]
    assert q[0].tolist() == columns
    assert w.zeros[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert dequantize(w)[:, 0].tolist() == [c - j for j, c in enumerate(columns)]
    out = to_awq(w)
    assert torch.equal(out["qweight"], qweight) and torch.equal(out["qzeros"], qzeros)


def test_awq_round_trip() -> None:
    w = _random_qweight(n=64, k=128, bits=4, groups=2, seed=5)
    tensors = to_awq(w)
    assert tensors["qweight"].shape == (128, 8) and tensors["qzeros"].shape == (2, 8)
    _assert_same(from_awq(**tensors, bits=4, group_size=64), w)


def test_awq_rejects() -> None:
    with pytest.raises(ValueError, match="4-bit"):
        from_awq(
            torch.zeros(8, 1, dtype=torch.int32),
            torch.zeros(1, 1, dtype=torch.int32),
            torch.ones(1, 8),
            bits=8,
            group_size=-1,
        )
    w = _random_qweight(n=8, k=16, bits=4, groups=2)
    w.g_idx = torch.tensor([1, 0] * 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="act-order"):
        to_awq(w)


# --- round-to-nearest --------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, -1])
def test_quantize_rtn_error_bound(bits: int, sym: bool, group_size: int) -> None:
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(48, 128, generator=gen) * 0.05  # [N, K]
    weight[0, :32] = 0.0  # an all-zero group (scale guard)
    weight[1, :32] = torch.rand(32, generator=gen) + 1.0  # an all-positive group
    w = quantize_rtn(weight, bits, group_size, sym)
    gs = 128 if group_size == -1 else group_size
    assert w.group_size == gs and w.scales.dtype == torch.float16 and w.g_idx is None
    assert w.scales.shape == (128 // gs, 48) and (w.scales > 0).all()
    if sym:
        assert (w.zeros == 1 << (bits - 1)).all()
    err = (dequantize(w) - weight).abs()  # [N, K]
    bound = w.scales.float().t().repeat_interleave(gs, dim=1) / 2  # [N, K]
    assert (err <= bound * (1 + 1e-5) + 1e-7).all()
    if group_size == 32:
        assert dequantize(w)[0, :32].abs().max() == 0.0


def test_quantize_rtn_short_last_group() -> None:
    weight = torch.randn(4, 40, generator=torch.Generator().manual_seed(8))
    w = quantize_rtn(weight, 4, 16, sym=False)  # groups of 16, 16, 8
    assert w.num_groups == 3
    bound = w.scales.float()[torch.arange(40) // 16].t() / 2  # [N, K]
    assert ((dequantize(w) - weight).abs() <= bound * (1 + 1e-5) + 1e-7).all()


# --- configs -----------------------------------------------------------------------------------

GPTQ_CONFIG = {  # config.json "quantization_config" of a Qwen2-VL GPTQ-Int4 style checkpoint
    "bits": 4,
    "damp_percent": 0.01,
    "desc_act": False,
    "group_size": 128,
    "modules_in_block_to_quantize": None,
    "quant_method": "gptq",
    "sym": True,
    "true_sequential": True,
}
GPTQ_V2_CONFIG = {  # GPTQModel quantize_config.json
    "bits": 8,
    "dynamic": None,
    "group_size": -1,
    "desc_act": True,
    "sym": False,
    "lm_head": False,
    "quant_method": "gptq",
    "checkpoint_format": "gptq_v2",
    "meta": {"quantizer": ["gptqmodel:1.2.1"], "uri": "https://github.com/modelcloud/gptqmodel"},
}
AWQ_CONFIG = {  # config.json "quantization_config" of an AutoAWQ VL checkpoint
    "bits": 4,
    "group_size": 128,
    "modules_to_not_convert": ["visual"],
    "quant_method": "awq",
    "version": "gemm",
    "zero_point": True,
}
AUTOAWQ_QUANT_CONFIG = {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"}


def test_parse_gptq_configs() -> None:
    assert parse_quant_config(GPTQ_CONFIG) == QuantSpec("gptq", 4, 128, True, False, "gptq", [])
    spec = parse_quant_config(GPTQ_V2_CONFIG)
    assert spec == QuantSpec("gptq", 8, -1, False, True, "gptq_v2", [])
    legacy = {"bits": 4, "group_size": 128, "desc_act": True, "sym": True}  # no quant_method
    assert parse_quant_config(legacy).desc_act


def test_parse_awq_configs() -> None:
    spec = parse_quant_config(AWQ_CONFIG)
    assert spec == QuantSpec("awq", 4, 128, False, False, "gemm", ["visual"])
    spec = parse_quant_config(AUTOAWQ_QUANT_CONFIG)
    assert (spec.method, spec.bits, spec.group_size) == ("awq", 4, 64)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes' is not supp"),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "'fp8' is not supported"),
        ({"quant_method": "compressed-tensors"}, "invalid compressed-tensors quantization_config"),
        ({**GPTQ_CONFIG, "bits": 3}, "GPTQ with 3 bits"),
        ({**GPTQ_CONFIG, "checkpoint_format": "marlin"}, "checkpoint_format 'marlin'"),
        ({**GPTQ_CONFIG, "is_marlin_format": True}, "checkpoint_format 'marlin'"),
        ({**GPTQ_CONFIG, "lm_head": True}, "lm_head"),
        ({**GPTQ_CONFIG, "group_size": 0}, "group_size"),
        ({**AWQ_CONFIG, "version": "gemv"}, "version 'gemv'"),
        ({**AWQ_CONFIG, "version": "exllama"}, "version 'exllama'"),
        ({**AWQ_CONFIG, "version": "marlin"}, "version 'marlin'"),
        ({**AWQ_CONFIG, "version": "ipex"}, "version 'ipex'"),
        ({**AWQ_CONFIG, "bits": 8}, "AWQ with 8 bits"),
        ({**AWQ_CONFIG, "zero_point": False}, "zero_point"),
        ({"damp_percent": 0.1}, "not a quantization config"),
    ],
)
def test_parse_rejects(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_quant_config(config)
