"""``QuantLinear``: a ``Linear`` whose weight is held quantized (W4A16 / W8A16).

The matmul strategy is chosen once, by device: on CUDA the Triton kernel dequantizes inside the
GEMM for M below ``dequant_threshold`` rows, and above it the weight is dequantized to the
activation dtype and multiplied by cuBLAS (at large M the GEMM is compute-bound and cuBLAS
wins; the threshold comes from ``benchmarks/bench_quant.py``); on the CPU the torch reference
dequantizes and multiplies (tests, the demo).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from valora.quant.reference import dequantize
from valora.quant.types import QuantizedWeight

DEQUANT_THRESHOLD = 256  # rows (tokens) from which dequantize + cuBLAS is used on the GPU


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W quantized; ``output_sizes`` as in ``Linear`` (stacked slices)."""

    def __init__(self, weight: QuantizedWeight, output_sizes: Sequence[int],
                 bias: torch.Tensor | None, dtype: torch.dtype) -> None:  # fmt: skip
        super().__init__()
        weight.validate()
        self.quantized = weight
        self.in_features = weight.in_features
        self.output_sizes = tuple(int(n) for n in output_sizes)
        self.output_offsets = (0, *accumulate(self.output_sizes))
        if self.output_offsets[-1] != weight.out_features:
            raise ValueError(f"slices {self.output_sizes} do not add up to N={weight.out_features}")
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.dtype = dtype
        self.dequant_threshold = DEQUANT_THRESHOLD
        self._cuda = weight.qweight.is_cuda

    @property
    def out_features(self) -> int:
        return self.output_offsets[-1]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight [N, K] (a fresh tensor: for merging and references)."""
        return dequantize(self.quantized, self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self._cuda and x2.shape[0] < self.dequant_threshold:
            from valora.quant.triton_gemm import quant_matmul

            y = quant_matmul(x2, self.quantized)
            if self.bias is not None:
                y += self.bias
        elif self._cuda:  # large M: compute-bound, cuBLAS on the dequantized weight
            from valora.quant.triton_gemm import dequantize_kn

            y = x2 @ dequantize_kn(self.quantized, x2.dtype)
            if self.bias is not None:
                y += self.bias
        else:
            y = F.linear(x2, dequantize(self.quantized, x2.dtype), self.bias)
        return y.view(*x.shape[:-1], y.shape[-1])
