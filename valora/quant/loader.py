"""GPTQ / AWQ / compressed-tensors checkpoints: their packed language-model linears ->
``QuantLinear``s.

The checkpoint's per-projection tensors (``q_proj.qweight`` or ``q_proj.weight_packed`` ...) are
converted to the canonical layout (``valora.quant.formats``) and stacked along N into our fused
modules (q|k|v, gate|up), which needs the stacked pieces to share their grouping (act-order
pieces of one input share ``g_idx``: they were quantized against the same inputs). Everything
else, biases included, is loaded by ``valora.weights.load_checkpoint``. Modules the checkpoint
keeps dense stay ``Linear``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from valora.quant.convert import PIECES_OF, lm_linears, replace_module
from valora.quant.formats import (
    QuantSpec,
    from_awq,
    from_compressed_tensors,
    from_gptq,
    parse_quant_config,
)
from valora.quant.linear import QuantLinear
from valora.quant.types import QuantizedWeight

PACKED = (".qweight", ".qzeros", ".scales", ".g_idx")  # GPTQ, AWQ
CT_PACKED = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape")


def install_quantized_linears(model, path: str | Path, config: dict) -> Callable[[str], bool]:
    """Replace every LM linear the checkpoint quantizes; returns the filter of the tensor names
    consumed here (for ``load_checkpoint``'s ``skip``)."""
    from valora.weights import canonical_name, checkpoint_files

    spec = parse_quant_config(config)
    suffixes = CT_PACKED if spec.method == "compressed-tensors" else PACKED
    tensors: dict[str, torch.Tensor] = {}
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as shard:
            for raw in shard.keys():
                if raw.endswith(suffixes):
                    tensors[canonical_name(raw)] = shard.get_tensor(raw)
    for module_path, linear in list(lm_linears(model)):
        parent, _, fused = module_path.rpartition(".")
        names = [f"{parent}.{piece}" for piece in PIECES_OF[fused]]
        if not all(f"{n}{suffixes[0]}" in tensors for n in names):
            continue  # kept dense by the checkpoint (modules_to_not_convert, ignore)
        weight = stack([convert(tensors, n, spec) for n in names], module_path)
        device, dtype = linear.weight.device, linear.weight.dtype
        bias = None if linear.bias is None else linear.bias.detach()
        replace_module(
            model, module_path, QuantLinear(weight.to(device), linear.output_sizes, bias, dtype)
        )
    return lambda name: name.endswith(suffixes)


def convert(tensors: dict, name: str, spec: QuantSpec) -> QuantizedWeight:
    def get(suffix: str) -> torch.Tensor:
        if f"{name}{suffix}" not in tensors:
            raise ValueError(f"quantized checkpoint lacks {name}{suffix}")
        return tensors[f"{name}{suffix}"]

    if spec.method == "awq":
        return from_awq(get(".qweight"), get(".qzeros"), get(".scales"), spec.bits, spec.group_size)
    if spec.method == "compressed-tensors":
        return from_compressed_tensors(
            get(".weight_packed"),
            get(".weight_scale"),
            get(".weight_shape"),
            spec.bits,
            None if spec.group_size == -1 else spec.group_size,
            tensors.get(f"{name}.weight_zero_point"),
        )
    g_idx = tensors.get(f"{name}.g_idx")
    return from_gptq(
        get(".qweight"),
        get(".qzeros"),
        get(".scales"),
        g_idx,
        spec.bits,
        spec.group_size,
        spec.checkpoint_format,
    )


def stack(pieces: list[QuantizedWeight], where: str) -> QuantizedWeight:
    """Concatenate along N (output features); the pieces must share bits and grouping."""
    first = pieces[0]
    for p in pieces[1:]:
        same_gidx = (p.g_idx is None and first.g_idx is None) or (
            p.g_idx is not None and first.g_idx is not None and torch.equal(p.g_idx, first.g_idx)
        )
        if p.bits != first.bits or p.group_size != first.group_size or not same_gidx:
            raise ValueError(
                f"{where}: the stacked projections are quantized differently "
                "(bits, group size or act-order g_idx)"
            )
    if len(pieces) == 1:
        return first
    cat = lambda attr: torch.cat([getattr(p, attr) for p in pieces], dim=1)  # noqa: E731
    return QuantizedWeight(
        cat("qweight"), cat("scales"), cat("zeros"), first.g_idx, first.bits, first.group_size
    )
