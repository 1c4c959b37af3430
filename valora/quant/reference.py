"""Plain-torch packing, dequantization and round-to-nearest quantization: the test oracle.

Everything here works on the canonical layout of ``types.QuantizedWeight`` (GPTQ packing along K,
low bits first) and is written for clarity, not speed.

Round-to-nearest conventions (``quantize_rtn``), per group of ``group_size`` input rows:

* asymmetric: the range [min(w, 0), max(w, 0)] (zero always representable, as in GPTQ) is split in
  ``2^bits - 1`` steps: ``scale = (hi - lo) / (2^bits - 1)``, ``zero = round(-lo / scale)``.
* symmetric: ``zero = 2^(bits-1)`` and ``scale = max|w| / (2^(bits-1) - 1)``, so +-max|w| is exact
  and the lowest code (q = 0) stays unused; this is the uint4b8 / uint8b128 form kernels expect.

Scales are rounded up to the next fp16 value (never down) before coding, so no weight falls
outside the representable range and every element is reconstructed within ``scale / 2``.
A group with an all-zero range gets scale 1.
"""

from __future__ import annotations

import torch

from valora.quant.types import QuantizedWeight

__all__ = ["dequantize", "group_index", "pack_rows", "quantize_rtn", "unpack_rows"]


def _check_bits(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"unsupported bits {bits}: 4 or 8")
    return 32 // bits


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret int64 values in [0, 2^32) as int32 bit patterns (two's complement wrap)."""
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_rows(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, N] int32 words packed along rows, low bits first -> [R * pack, N] int32 codes."""
    pack = _check_bits(bits)
    mask = (1 << bits) - 1
    shifts = torch.arange(pack, device=qweight.device, dtype=torch.int64) * bits  # [pack]
    words = qweight.to(torch.int64).unsqueeze(1)  # [R, 1, N], sign-extended; masked below
    codes = (words >> shifts.view(1, pack, 1)) & mask  # [R, pack, N]
    return codes.reshape(-1, qweight.shape[1]).to(torch.int32)


def pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """[K, N] integer codes in [0, 2^bits) -> [K // pack, N] int32, row k in bits (k % pack)."""
    pack = _check_bits(bits)
    k, n = q.shape
    if k % pack:
        raise ValueError(f"{k} rows are not a multiple of {pack} ({bits}-bit packing)")
    mask = (1 << bits) - 1
    codes = (q.to(torch.int64) & mask).view(k // pack, pack, n)  # [K/pack, pack, N]
    shifts = torch.arange(pack, device=q.device, dtype=torch.int64) * bits
    words = (codes << shifts.view(1, pack, 1)).sum(dim=1)  # disjoint bits: sum == or
    return _to_int32(words)


def group_index(w: QuantizedWeight) -> torch.Tensor:
    """[K] int64 group of each input row: g_idx, or k // group_size without act-order."""
    if w.g_idx is not None:
        return w.g_idx.to(torch.int64)
    k = w.in_features
    return torch.arange(k, device=w.qweight.device) // w.group_size


def dequantize(w: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W[n, k] = (q[k, n] - zeros[g(k), n]) * scales[g(k), n] as an [N, K] tensor of ``dtype``."""
    q = unpack_rows(w.qweight, w.bits).to(torch.float32)  # [K, N]
    g = group_index(w)  # [K]
    zeros = w.zeros.to(torch.float32)[g]  # [K, N]
    scales = w.scales.to(torch.float32)[g]  # [K, N]
    return ((q - zeros) * scales).t().contiguous().to(dtype)  # [N, K]


def _fp16_scale_up(scale: torch.Tensor) -> torch.Tensor:
    """fp32 scale -> fp16 scale >= it (one ulp up where fp16 rounding went down); 0 -> 1."""
    s16 = scale.to(torch.float16)
    up = torch.nextafter(s16, torch.full_like(s16, float("inf")))
    s16 = torch.where(s16.to(torch.float32) < scale, up, s16)
    return torch.where(s16 > 0, s16, torch.ones_like(s16))


def _group_ranges(
    w: torch.Tensor, group_size: int, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, N] fp32 -> per-group (min, max) over K, each [G, N]; a short last group is allowed."""
    k, n = w.shape
    pad = num_groups * group_size - k
    if pad:
        # padding with 0 is harmless: 0 is inside every range, see the module docstring
        w = torch.cat([w, w.new_zeros(pad, n)])
    grouped = w.view(num_groups, group_size, n)  # [G, gs, N]
    return grouped.amin(dim=1), grouped.amax(dim=1)


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> QuantizedWeight:
    """Round-to-nearest quantization of an [N, K] weight per group of rows along K.

    ``group_size`` -1 means one group over all of K. K must be a multiple of 32 // bits.
    """
    pack = _check_bits(bits)
    n, k = weight.shape
    if k % pack:
        raise ValueError(f"in_features {k} is not a multiple of {pack}")
    group_size = k if group_size == -1 else group_size
    if group_size <= 0:
        raise ValueError(f"group_size must be positive or -1, got {group_size}")
    num_groups = -(-k // group_size)
    wt = weight.detach().to(torch.float32).t().contiguous()  # [K, N]
    lo, hi = _group_ranges(wt, group_size, num_groups)  # [G, N] each
    maxq = (1 << bits) - 1
    if sym:
        half = 1 << (bits - 1)
        scales = _fp16_scale_up(torch.maximum(lo.abs(), hi.abs()) / (half - 1))  # [G, N]
        zeros = torch.full_like(scales, half, dtype=torch.int32)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scales = _fp16_scale_up((hi - lo) / maxq)  # [G, N]
        zeros = torch.round(-lo / scales.float()).clamp(0, maxq).to(torch.int32)
    g = torch.arange(k, device=weight.device) // group_size  # [K]
    s_rows, z_rows = scales.float()[g], zeros[g]  # [K, N]
    q = (torch.round(wt / s_rows) + z_rows).clamp(0, maxq).to(torch.int32)  # [K, N]
    out = QuantizedWeight(pack_rows(q, bits), scales, zeros, None, bits, group_size)
    out.validate()
    return out
