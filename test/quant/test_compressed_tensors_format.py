"""compressed-tensors ``pack-quantized`` tensors -> the canonical ``QuantizedWeight``: the
library compresses a random weight (its own quantize and pack), and our canonical weight
dequantizes to exactly the library's own decompression (its oracle), for int4 and int8, group and
channel scales, symmetric and asymmetric. (Loading whole checkpoints is not wired yet.)"""

from __future__ import annotations

import pytest
import torch

from valora.quant.formats import from_compressed_tensors
from valora.quant.reference import dequantize

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized.base import (  # noqa: E402
    PackedQuantizationCompressor,
)
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402

N, K = 24, 64


def _scheme(bits: int, group_size: int | None, symmetric: bool) -> QuantizationScheme:
    strategy = "group" if group_size else "channel"
    args = QuantizationArgs(
        num_bits=bits, type="int", symmetric=symmetric, strategy=strategy, group_size=group_size
    )
    return QuantizationScheme(targets=["Linear"], weights=args)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [16, None])
@pytest.mark.parametrize("symmetric", [True, False])
def test_canonical_weight_dequantizes_to_the_librarys_decompression(bits, group_size, symmetric):
    gen = torch.Generator().manual_seed(bits * 100 + (group_size or 0) + symmetric)
    groups = K // group_size if group_size else 1
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    state = {
        "weight": torch.randn(N, K, generator=gen),
        "weight_scale": torch.rand(N, groups, generator=gen) * 0.05 + 0.01,
    }
    if not symmetric:
        zp = torch.randint(low, high + 1, (N, groups), generator=gen, dtype=torch.int32)
        state["weight_zero_point"] = zp.to(torch.int8)
    scheme = _scheme(bits, group_size, symmetric)
    packed = PackedQuantizationCompressor.compress(state, scheme)
    oracle = PackedQuantizationCompressor.decompress(packed, scheme)["weight"].float()

    canonical = from_compressed_tensors(
        packed["weight_packed"],
        packed["weight_scale"],
        packed["weight_shape"],
        bits,
        group_size,
        packed.get("weight_zero_point"),
    )
    assert (canonical.in_features, canonical.out_features) == (K, N)
    assert canonical.num_groups == groups and canonical.g_idx is None
    ours = dequantize(canonical)  # [N, K]
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-6)
    assert not torch.equal(oracle, torch.zeros_like(oracle))


def test_in_features_that_do_not_pack_are_refused():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        from_compressed_tensors(
            torch.zeros(4, 2, dtype=torch.int32),
            torch.ones(4, 1),
            torch.tensor([4, 60]),
            4,
            None,
        )
