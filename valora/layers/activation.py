"""Activation functions by their Hugging Face names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[.., 2 * I] (gate | up) -> silu(gate) * up: [.., I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


ACTIVATIONS: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = MappingProxyType(
    {
        "quick_gelu": quick_gelu,
        "gelu": gelu_exact,
        "silu": F.silu,
    }
)


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
