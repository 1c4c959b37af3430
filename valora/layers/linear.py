"""Linear layers.

A ``Linear`` may stack several logical projections along its output dimension (q|k|v, gate|up):
``output_sizes`` names the slices so the weight loader and the LoRA layer can address each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x @ W^T + b with W: [sum(output_sizes), in_features]."""

    def __init__(self, in_features: int, output_sizes: Sequence[int], bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.output_sizes = tuple(int(n) for n in output_sizes)
        # slice i covers rows output_offsets[i] : output_offsets[i + 1]
        self.output_offsets = (0, *accumulate(self.output_sizes))
        out_features = self.output_offsets[-1]
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    @property
    def out_features(self) -> int:
        return self.output_offsets[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)
