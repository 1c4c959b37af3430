"""The decoder layer's small ops as one strategy: torch (CPU path and reference) or Triton (GPU).

Each op has one exact meaning, written here in torch; ``TritonKernels`` computes the same with
the same roundings (every intermediate the torch code materialises in the model dtype is rounded
to that dtype in the kernel too), in one launch per op instead of several.

- ``rms_norm(x, w, eps)``: ``w * (x / sqrt(mean(x^2) + eps))``; statistics in fp32, the
  normalised value rounded to x's dtype before the product (Qwen2's order).
- ``add_rms_norm(x, residual, w, eps)``: ``s = x + residual`` (in x's dtype), returns
  ``(rms_norm(s), s)``: the residual stream and the next layer's normalised input in one pass.
- ``silu_and_mul(gate_up)``: ``[.., 2I] -> silu(gate) * up``.
- ``rotary(q, k, cos, sin)``: rotate-half RoPE of q [T, Hq, D] and k [T, Hkv, D] with cos/sin
  [T, D] (dtype of q); returns the rotated (q, k). The Triton version rotates in place.

The strategy is chosen once, when the model is placed on its device
(``valora.layers.kernel_choice.kernels_for``).
"""

from __future__ import annotations

import torch

from valora.layers.activation import silu_and_mul
from valora.layers.rotary import apply_rotary


class TorchKernels:
    name = "torch"

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)

    @classmethod
    def add_rms_norm(
        cls, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        summed = x + residual
        return cls.rms_norm(summed, weight, eps), summed

    @staticmethod
    def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(gate_up)

    @staticmethod
    def rotary(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
