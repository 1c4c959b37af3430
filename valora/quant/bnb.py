"""bitsandbytes 4-bit checkpoints (NF4 or FP4, double quantization on or off), as transformers
saves a ``load_in_4bit`` model: each quantized linear's ``weight`` holds uint8 codes (two a byte)
and its quant state sits beside it (``weight.absmax``, ``weight.quant_map``, ``weight.nested_*``
with double quantization, ``weight.quant_state.bitsandbytes__<nf4|fp4>``).

They are dequantized on load by bitsandbytes' own ``dequantize_4bit`` into dense weights: exactly
the values the QLoRA base computed with, so a QLoRA user serves the base they trained on. The
engine then serves a dense base; NF4 codes are not uniform levels, so mapping them onto the int4
W4A16 kernels could not be exact.
"""

from __future__ import annotations

from typing import Any

import torch

STATE_MARK = ".quant_state.bitsandbytes__"
STATE_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
QUANT_TYPES = ("nf4", "fp4")


def is_bitsandbytes(config: dict | None) -> bool:
    return bool(config) and str(config.get("quant_method", "")).lower() == "bitsandbytes"


def check_bitsandbytes_config(config: dict[str, Any]) -> None:
    """ValueError unless the checkpoint is 4-bit (LLM.int8 checkpoints are refused)."""
    if not (config.get("load_in_4bit") or config.get("_load_in_4bit")):
        raise ValueError(
            "bitsandbytes 8-bit (LLM.int8) checkpoints are not supported: only load_in_4bit "
            "(NF4 / FP4) ones"
        )
    quant_type = str(config.get("bnb_4bit_quant_type", "nf4")).lower()
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"bitsandbytes 4-bit type {quant_type!r} is not supported: nf4 or fp4")


def is_quant_state(name: str) -> bool:
    """A quantized weight's state tensor (not the weight itself)."""
    return STATE_MARK in name or name.endswith(STATE_SUFFIXES)


def read_dequantized(shard, name: str, names: set[str]) -> torch.Tensor:
    """``load_checkpoint``'s reader: a 4-bit weight (its quant state beside it in the same
    shard, as transformers saves it) dequantized to dense fp32 [N, K]; any other tensor as
    stored. One weight at a time, so a dequantized copy of the whole model is never held."""
    markers = (f"{name}{STATE_MARK}{quant_type}" for quant_type in QUANT_TYPES)
    marker = next((m for m in markers if m in names), None)
    if marker is None:
        return shard.get_tensor(name)
    try:
        from bitsandbytes.functional import QuantState, dequantize_4bit
    except ImportError:
        raise ValueError(
            "bitsandbytes 4-bit checkpoints need bitsandbytes: pip install 'valora[train]'"
        ) from None
    state_names = [marker] + [name + s for s in STATE_SUFFIXES if name + s in names]
    state = {n[len(name) + 1 :]: shard.get_tensor(n) for n in state_names}
    quant_state = QuantState.from_dict(state, device=torch.device("cpu"))
    return dequantize_4bit(shard.get_tensor(name), quant_state).to(torch.float32)
