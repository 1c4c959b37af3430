"""Normalisation layers (the math lives in ``valora.layers.kernels``)."""

from __future__ import annotations

import torch
from torch import nn

from valora.layers.kernels import TorchKernels


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps); statistics in fp32, product in the input dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TorchKernels.rms_norm(x, self.weight, self.eps)
