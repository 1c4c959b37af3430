"""``QuantLinear``: a ``Linear`` whose weight is held quantized (W4A16 / W8A16).

The matmul strategy is chosen once, by device: on CUDA ``quant_matmul`` runs the strategy the
tuned table (``valora.quant.config_table``) holds for the call's shape bucket (in-kernel
dequantization for small M, dequantize + cuBLAS where that measured faster); on the CPU the
torch reference dequantizes and multiplies (tests, the demo).

Merged mode: while an adapter is merged, ``merged_weight`` holds a dense [N, K] copy, the
dequantized weight plus the adapter's delta (``valora.adapters.merge``), and the layer runs a
dense GEMM on it; the quantized weight itself never changes, so unmerging only drops the copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from valora.quant.reference import dequantize
from valora.quant.types import QuantizedWeight


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W quantized; ``output_sizes`` as in ``Linear`` (stacked slices)."""

    def __init__(
        self,
        weight: QuantizedWeight,
        output_sizes: Sequence[int],
        bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> None:
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
        self._cuda = weight.qweight.is_cuda
        self.merged_weight: torch.Tensor | None = None  # [N, K] dense, while merged

    @property
    def out_features(self) -> int:
        return self.output_offsets[-1]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight [N, K] (a fresh tensor: for references)."""
        return dequantize(self.quantized, self.dtype)

    def dequantize_into(self, out: torch.Tensor) -> None:
        """out [N, K] <- the dequantized weight (one pass on the GPU)."""
        if self._cuda:
            from valora.quant.triton_gemm import dequantize_kn

            out.copy_(dequantize_kn(self.quantized, out.dtype).t())
        else:
            out.copy_(dequantize(self.quantized, out.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.merged_weight is not None:
            y = F.linear(x2, self.merged_weight, self.bias)
        elif self._cuda:
            from valora.quant.triton_gemm import quant_matmul

            y = quant_matmul(x2, self.quantized)
            if self.bias is not None:
                y += self.bias
        else:
            y = F.linear(x2, dequantize(self.quantized, x2.dtype), self.bias)
        return y.view(*x.shape[:-1], y.shape[-1])
