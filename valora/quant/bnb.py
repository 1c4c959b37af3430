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

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

STATE_MARK = ".quant_state.bitsandbytes__"
STATE_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")


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
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bitsandbytes 4-bit type {quant_type!r} is not supported: nf4 or fp4")


def is_quant_state(name: str) -> bool:
    """A quantized weight's state tensor (not the weight itself)."""
    return STATE_MARK in name or name.endswith(STATE_SUFFIXES)


def dequantized_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """{checkpoint name of each 4-bit weight: its dense fp32 [N, K] value}."""
    try:
        from bitsandbytes.functional import QuantState, dequantize_4bit
    except ImportError:
        raise ValueError(
            "bitsandbytes 4-bit checkpoints need bitsandbytes: pip install 'valora[train]'"
        ) from None
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as shard:
            names = list(shard.keys())
            for marker in (n for n in names if STATE_MARK in n):
                weight = marker.split(STATE_MARK)[0]
                state = {
                    n[len(weight) + 1 :]: shard.get_tensor(n)
                    for n in names
                    if n.startswith(weight + ".") and is_quant_state(n)
                }
                quant_state = QuantState.from_dict(state, device=torch.device("cpu"))
                dense = dequantize_4bit(shard.get_tensor(weight), quant_state)
                out[weight] = dense.to(torch.float32)
    return out
