"""The canonical quantized weight every kernel reads.

For a linear y = x W^T with W [N, K] (out, in features), ``bits`` in {4, 8}, pack = 32 // bits:

    qweight: [K // pack, N] int32   q[k, n] = (qweight[k // pack, n] >> (bits * (k % pack))) & mask
                                    (GPTQ's packing: along K, low bits first)
    scales:  [G, N] fp16 / bf16     G = number of groups
    zeros:   [G, N] int32           the zero point z itself (not GPTQ v1's z - 1)
    g_idx:   [K] int32 or None      group of input row k; None: k // group_size (no act-order)

    W[n, k] = (q[k, n] - zeros[g(k), n]) * scales[g(k), n]

``group_size`` is K when the checkpoint says -1 (one group per column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor | None
    bits: int
    group_size: int

    @property
    def pack(self) -> int:
        return 32 // self.bits

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * self.pack

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def num_groups(self) -> int:
        return self.scales.shape[0]

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"unsupported bits {self.bits}: 4 or 8")
        k, n = self.in_features, self.out_features
        if self.qweight.dtype != torch.int32 or self.zeros.dtype != torch.int32:
            raise ValueError("qweight and zeros must be int32")
        if self.scales.shape != self.zeros.shape or self.scales.shape[1] != n:
            raise ValueError(
                f"scales {tuple(self.scales.shape)} / zeros "
                f"{tuple(self.zeros.shape)} do not match N={n}"
            )
        if self.g_idx is None and -(-k // self.group_size) != self.num_groups:
            raise ValueError(f"{self.num_groups} groups for K={k}, group size {self.group_size}")
        if self.g_idx is not None and self.g_idx.shape != (k,):
            raise ValueError(f"g_idx must be [{k}], got {tuple(self.g_idx.shape)}")

    def to(self, device) -> QuantizedWeight:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(
            move(self.qweight),
            move(self.scales),
            move(self.zeros),
            move(self.g_idx),
            self.bits,
            self.group_size,
        )
