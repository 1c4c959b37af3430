"""GPTQ, AWQ and compressed-tensors checkpoint tensors <-> the canonical ``QuantizedWeight``, and
their configs.

GPTQ (AutoGPTQ / GPTQModel / optimum), per linear with W [N, K] and pack = 32 // bits:

    qweight [K / pack, N] int32   packed along K, low bits first (identical to the canonical one)
    qzeros  [G, N / pack] int32   packed along N, low bits first: column n in bits (n % pack)
    scales  [G, N] fp16           g_idx [K] int32 (non-monotone with desc_act / act-order)

``checkpoint_format`` "gptq" (v1, the default) stores z - 1 with the word masked to ``bits``, so
the zero point is z = (stored + 1) & (2^bits - 1): symmetric 4-bit stores 7 for z = 8, and a
stored 15 (written for z = 0) reads back as 0, as AutoGPTQ's reference dequantization does.
"gptq_v2" (GPTQModel) stores z itself.

AWQ (AutoAWQ, version "gemm"), 4-bit only:

    qweight [K, N / 8] int32      packed along N with an interleave: the nibble in slot s
    qzeros  [G, N / 8] int32      (bits 4s..4s+3) holds column 8c + AWQ_ORDER[s], so column
    scales  [G, N] fp16           8c + j sits in slot AWQ_REVERSE_ORDER[j]; zeros are z itself

compressed-tensors ``pack-quantized`` (llm-compressor), per linear with W [N, K]:

    weight_packed      [N, ceil(K * bits / 32)] int32  signed codes q + 2^(bits-1), packed along
                                                       K, low bits first (the library's
                                                       ``pack_to_int32``)
    weight_scale       [N, G]                          G = 1 (channel) or K / group_size (group)
    weight_zero_point  [ceil(N * bits / 32), G] int32  asymmetric only: signed zero points packed
                                                       along N (``packed_dim=0``); absent: 0
    weight_shape       [2]                             (N, K)

    W[n, k] = (q[n, k] - zp[n, g(k)]) * scale[n, g(k)], q and zp signed; in the canonical form
    the stored unsigned code is q + 2^(bits-1), so z = zp + 2^(bits-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from valora.quant.reference import pack_rows, unpack_rows
from valora.quant.types import QuantizedWeight

__all__ = [
    "AWQ_ORDER",
    "AWQ_REVERSE_ORDER",
    "QuantSpec",
    "from_awq",
    "from_compressed_tensors",
    "from_gptq",
    "parse_quant_config",
    "to_awq",
    "to_gptq",
]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # slot s holds column AWQ_ORDER[s] of its 8-column pack
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j sits in slot AWQ_REVERSE_ORDER[j]
GPTQ_FORMATS = ("gptq", "gptq_v2")


def _unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C / pack] int32 packed along columns, low bits first -> [R, C] int32."""
    return unpack_rows(packed.t(), bits).t().contiguous()


def _pack_cols(q: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] codes -> [R, C / pack] int32 packed along columns, low bits first."""
    return pack_rows(q.t(), bits).t().contiguous()


def _resolve_group_size(group_size: int, k: int) -> int:
    if group_size == -1:
        return k
    if group_size <= 0:
        raise ValueError(f"group_size must be positive or -1, got {group_size}")
    return group_size


def _check_gptq_format(checkpoint_format: str) -> None:
    if checkpoint_format not in GPTQ_FORMATS:
        raise ValueError(
            f"unsupported GPTQ checkpoint_format {checkpoint_format!r}: one of {GPTQ_FORMATS}"
        )


def _trivial_g_idx(k: int, group_size: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(k, device=device) // group_size).to(torch.int32)  # [K]


def from_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    bits: int,
    group_size: int,
    checkpoint_format: str = "gptq",
) -> QuantizedWeight:
    """GPTQ tensors (layout in the module docstring) -> canonical; trivial g_idx becomes None."""
    _check_gptq_format(checkpoint_format)
    pack = 32 // bits
    k = qweight.shape[0] * pack
    group_size = _resolve_group_size(group_size, k)
    n = qweight.shape[1]
    if qzeros.shape[1] * pack != n:
        raise ValueError(
            f"qzeros {tuple(qzeros.shape)} does not pack N={n} columns {pack} per word"
        )
    zeros = _unpack_cols(qzeros, bits)  # [G, N]
    if checkpoint_format == "gptq":
        zeros = (zeros + 1) & ((1 << bits) - 1)  # v1 stores z - 1, wrapped to ``bits``
    if g_idx is not None:
        g_idx = g_idx.to(device=qweight.device, dtype=torch.int32)
        if torch.equal(g_idx, _trivial_g_idx(k, group_size, qweight.device)):
            g_idx = None
    out = QuantizedWeight(qweight.to(torch.int32), scales, zeros, g_idx, bits, group_size)
    out.validate()
    return out


def to_gptq(w: QuantizedWeight, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """Canonical -> GPTQ tensors {qweight, qzeros, scales, g_idx} (g_idx always written)."""
    _check_gptq_format(checkpoint_format)
    w.validate()
    stored = w.zeros - 1 if checkpoint_format == "gptq" else w.zeros  # [G, N]
    qzeros = _pack_cols(stored & ((1 << w.bits) - 1), w.bits)  # [G, N / pack]
    g_idx = w.g_idx
    if g_idx is None:
        g_idx = _trivial_g_idx(w.in_features, w.group_size, w.qweight.device)
    return {"qweight": w.qweight, "qzeros": qzeros, "scales": w.scales, "g_idx": g_idx}


def _awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """[R, C / 8] AWQ-interleaved int32 -> [R, C] int32 in natural column order."""
    slots = _unpack_cols(packed, 4).view(packed.shape[0], -1, 8)  # [R, C/8, slot]
    rev = torch.tensor(AWQ_REVERSE_ORDER, device=packed.device)
    return slots[:, :, rev].reshape(packed.shape[0], -1)  # column j <- slot REVERSE[j]


def _awq_pack(q: torch.Tensor) -> torch.Tensor:
    """[R, C] codes in natural order -> [R, C / 8] AWQ-interleaved int32."""
    r, c = q.shape
    if c % 8:
        raise ValueError(f"AWQ packs 8 columns per word; {c} is not a multiple of 8")
    order = torch.tensor(AWQ_ORDER, device=q.device)
    slots = q.view(r, c // 8, 8)[:, :, order].reshape(r, c)  # slot s <- column ORDER[s]
    return _pack_cols(slots, 4)


def from_awq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bits: int = 4,
    group_size: int = 128,
) -> QuantizedWeight:
    """AWQ GEMM tensors (layout in the module docstring) -> canonical (no act-order)."""
    if bits != 4:
        raise ValueError(f"AWQ GEMM checkpoints are 4-bit only, got bits={bits}")
    k = qweight.shape[0]
    if k % 8:
        raise ValueError(f"in_features {k} is not a multiple of 8")
    group_size = _resolve_group_size(group_size, k)
    if qzeros.shape[1] != qweight.shape[1]:
        raise ValueError(
            f"qzeros {tuple(qzeros.shape)} / qweight {tuple(qweight.shape)} differ in N"
        )
    q = _awq_unpack(qweight.to(torch.int32))  # [K, N]
    zeros = _awq_unpack(qzeros.to(torch.int32))  # [G, N]
    out = QuantizedWeight(pack_rows(q, 4), scales, zeros, None, 4, group_size)
    out.validate()
    return out


def to_awq(w: QuantizedWeight) -> dict[str, torch.Tensor]:
    """Canonical -> AWQ GEMM tensors {qweight, qzeros, scales}; 4-bit without act-order only."""
    w.validate()
    if w.bits != 4:
        raise ValueError(f"AWQ GEMM checkpoints are 4-bit only, got bits={w.bits}")
    if w.g_idx is not None:
        raise ValueError("AWQ has no act-order: g_idx must be None")
    q = unpack_rows(w.qweight, 4)  # [K, N]
    return {"qweight": _awq_pack(q), "qzeros": _awq_pack(w.zeros & 0xF), "scales": w.scales}


# ---------------------------------------------------------------------------------------------
# Config: config.json ``quantization_config`` or a quantize_config.json / quant_config.json file


@dataclass(frozen=True)
class QuantSpec:
    """What a checkpoint's quantization config says. ``group_size`` -1: one group over all of K.

    ``checkpoint_format``: "gptq" / "gptq_v2" for GPTQ, "gemm" for AWQ, "pack-quantized" for
    compressed-tensors. ``modules_to_not_convert``: name substrings of linears left unquantized
    (AWQ; compressed-tensors' ``ignore`` list; empty for GPTQ).
    """

    method: str
    bits: int
    group_size: int
    sym: bool
    desc_act: bool
    checkpoint_format: str
    modules_to_not_convert: list[str] = field(default_factory=list)


_AWQ_ONLY_KEYS = ("w_bit", "q_group_size", "zero_point", "version")


def _quant_method(d: dict[str, Any]) -> str:
    method = d.get("quant_method")
    if method is None:  # AutoAWQ's quant_config.json / older AutoGPTQ quantize_config.json
        if any(key in d for key in _AWQ_ONLY_KEYS):
            return "awq"
        if "bits" in d:
            return "gptq"
        raise ValueError(f"not a quantization config (no quant_method or bits): {sorted(d)}")
    return str(method).lower()


def _group_size_field(value: Any) -> int:
    group_size = int(value)
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be positive or -1, got {group_size}")
    return group_size


def _parse_gptq(d: dict[str, Any]) -> QuantSpec:
    bits = int(d["bits"])
    if bits not in (4, 8):
        raise ValueError(f"GPTQ with {bits} bits is not supported: 4 or 8")
    fmt = d.get("checkpoint_format") or d.get("format") or "gptq"
    if d.get("is_marlin_format"):
        fmt = "marlin"
    fmt = str(fmt).lower()
    if fmt not in GPTQ_FORMATS:
        raise ValueError(f"GPTQ checkpoint_format {fmt!r} is not supported: one of {GPTQ_FORMATS}")
    if d.get("lm_head"):
        raise ValueError("GPTQ checkpoints with a quantized lm_head are not supported")
    if d.get("dynamic"):
        raise ValueError("GPTQ per-module overrides ('dynamic') are not supported")
    return QuantSpec(
        method="gptq",
        bits=bits,
        group_size=_group_size_field(d.get("group_size", 128)),
        sym=bool(d.get("sym", True)),
        desc_act=bool(d.get("desc_act", False)),
        checkpoint_format=fmt,
        modules_to_not_convert=list(d.get("modules_to_not_convert") or []),
    )


def _parse_awq(d: dict[str, Any]) -> QuantSpec:
    bits = int(d.get("bits", d.get("w_bit", 4)))
    if bits != 4:
        raise ValueError(f"AWQ with {bits} bits is not supported: 4 only")
    version = str(d.get("version") or d.get("format") or "gemm").lower()
    if version != "gemm":
        raise ValueError(
            f"AWQ version {version!r} is not supported: only 'gemm' checkpoints "
            "(AutoAWQ's default layout) can be loaded"
        )
    if not d.get("zero_point", True):
        raise ValueError("AWQ without zero points (zero_point: false) is not supported")
    return QuantSpec(
        method="awq",
        bits=bits,
        group_size=_group_size_field(d.get("group_size", d.get("q_group_size", 128))),
        sym=False,
        desc_act=False,
        checkpoint_format="gemm",
        modules_to_not_convert=list(d.get("modules_to_not_convert") or []),
    )


def parse_quant_config(d: dict[str, Any]) -> QuantSpec:
    """A ``quantization_config`` dict (or a quantize_config.json dict) -> ``QuantSpec``.

    Raises ValueError, naming the offending field, for anything other than GPTQ (v1 / v2, 4 or
    8 bits) and AWQ GEMM (4 bits).
    """
    method = _quant_method(d)
    if method == "gptq":
        return _parse_gptq(d)
    if method == "awq":
        return _parse_awq(d)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(d)
    raise ValueError(
        f"quantization method {method!r} is not supported: only GPTQ ('gptq'), AWQ ('awq', "
        "version 'gemm') and compressed-tensors ('pack-quantized') checkpoints"
    )


CT_FORMATS = ("pack-quantized",)
CT_STRATEGIES = ("group", "channel")


def _ct_config(d: dict[str, Any]):
    """The library's own validated ``QuantizationConfig``; its errors become ValueErrors."""
    try:
        from compressed_tensors.quantization import QuantizationConfig
    except ImportError:
        raise ValueError(
            "compressed-tensors checkpoints need the compressed-tensors package: "
            "pip install 'valora[quant]'"
        ) from None
    from pydantic import ValidationError

    try:
        return QuantizationConfig.model_validate(d)
    except ValidationError as error:
        raise ValueError(f"invalid compressed-tensors quantization_config: {error}") from None


def _parse_compressed_tensors(d: dict[str, Any]) -> QuantSpec:
    """compressed-tensors weight-only int4 / int8 (``pack-quantized``, one config group); the
    metadata is read by the library (``QuantizationConfig``)."""
    if d.get("sparsity_config"):
        raise ValueError(
            "compressed-tensors sparse checkpoints (sparsity_config) are not supported"
        )
    config = _ct_config(d)
    groups = list((config.config_groups or {}).values())
    if len(groups) != 1:
        raise ValueError(
            f"compressed-tensors checkpoints with {len(groups)} config groups are not supported: "
            "one scheme for every quantized linear"
        )
    scheme = groups[0]
    fmt = str(scheme.format or config.format or "").lower()
    if fmt not in CT_FORMATS:
        raise ValueError(
            f"compressed-tensors format {fmt!r} is not supported yet: only {CT_FORMATS} "
            "(weight-only int4 / int8)"
        )
    if scheme.input_activations is not None or scheme.output_activations is not None:
        raise ValueError("compressed-tensors activation quantization is not supported yet")
    weights = scheme.weights
    strategy = str(getattr(weights.strategy, "value", weights.strategy)).lower()
    if str(getattr(weights.type, "value", weights.type)) != "int" or weights.num_bits not in (4, 8):
        raise ValueError(f"compressed-tensors weights {weights}: int4 or int8 only")
    if strategy not in CT_STRATEGIES or weights.actorder or weights.dynamic:
        raise ValueError(
            f"compressed-tensors weight strategy {strategy!r} (actorder {weights.actorder!r}) "
            f"is not supported: {CT_STRATEGIES}, no actorder"
        )
    return QuantSpec(
        method="compressed-tensors",
        bits=weights.num_bits,
        group_size=_group_size_field(weights.group_size if strategy == "group" else -1),
        sym=bool(weights.symmetric),
        desc_act=False,
        checkpoint_format=fmt,
        modules_to_not_convert=list(config.ignore or []),
    )


def from_compressed_tensors(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_shape: torch.Tensor,
    bits: int,
    group_size: int | None,
    weight_zero_point: torch.Tensor | None = None,
) -> QuantizedWeight:
    """compressed-tensors ``pack-quantized`` tensors (layout in the module docstring) ->
    canonical. Unpacking is the library's own ``unpack_from_int32``; ``group_size`` None means
    one group per channel."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    n, k = (int(v) for v in weight_shape.tolist())
    pack = 32 // bits
    if k % pack:
        raise ValueError(f"in_features {k} is not a multiple of {pack} ({bits}-bit packing)")
    offset = 1 << (bits - 1)
    signed = unpack_from_int32(weight_packed, bits, torch.Size((n, k)))  # [N, K] int8
    codes = signed.to(torch.int32) + offset  # [N, K] in 0 .. 2^bits - 1
    num_groups = weight_scale.shape[1]
    zeros = torch.full((num_groups, n), offset, dtype=torch.int32, device=codes.device)
    if weight_zero_point is not None:
        zp = unpack_from_int32(weight_zero_point, bits, torch.Size((n, num_groups)), packed_dim=0)
        zeros = zp.to(torch.int32).t().contiguous() + offset  # [G, N]
    out = QuantizedWeight(
        qweight=pack_rows(codes.t().contiguous(), bits),  # [K / pack, N]
        scales=weight_scale.t().contiguous(),  # [G, N]
        zeros=zeros,
        g_idx=None,
        bits=bits,
        group_size=_resolve_group_size(group_size or -1, k),
    )
    out.validate()
    return out
