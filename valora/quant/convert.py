"""Turning a model's language-model linears into ``QuantLinear``s.

``quantize_model_rtn`` quantizes the weights already loaded (round to nearest, per group): the
dummy quantized weights of the named settings, and the ``rtn`` method of the quantizer. The
vision tower, the embeddings and the LM head stay in the model dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from valora.layers.linear import Linear
from valora.quant.linear import QuantLinear
from valora.quant.reference import quantize_rtn
from valora.weights import UNSTACK

LM_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
METHODS = {"w4a16": 4, "w8a16": 8}
# each LM linear (module name) -> the checkpoint projections it stacks, in slice order
PIECES_OF = {m: UNSTACK.get(m, (m,)) for m in (n.rpartition(".")[2] for n in LM_LINEARS)}


def lm_linears(model: nn.Module) -> Iterator[tuple[str, Linear]]:
    """(path, module) of every language-model linear that quantization replaces."""
    for i in range(len(model.model.layers)):
        for name in LM_LINEARS:
            path = f"model.layers.{i}.{name}"
            yield path, model.get_submodule(path)


def replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@torch.no_grad()
def quantize_model_rtn(
    model: nn.Module, method: str, group_size: int = 128, sym: bool = False
) -> None:
    """In place: every LM linear -> QuantLinear (RTN, ``method`` w4a16 | w8a16)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {sorted(METHODS)}")
    for path, linear in list(lm_linears(model)):
        weight = linear.weight.detach()
        quantized = quantize_rtn(weight.float(), METHODS[method], group_size, sym)
        quantized = quantized.to(weight.device)  # scales stay fp16, as GPTQ stores them
        bias = None if linear.bias is None else linear.bias.detach()
        replace_module(model, path, QuantLinear(quantized, linear.output_sizes, bias, weight.dtype))
