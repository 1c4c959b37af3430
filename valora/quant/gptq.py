"""GPTQ (Frantar et al., ICLR 2023) for one linear: columns quantized in order, each one's error
spread over the not-yet-quantized columns through the inverse Hessian of the layer inputs.

``hessian`` is sum_t x_t x_t^T over calibration tokens ([K, K], fp32). With ``act_order`` the
columns go in decreasing Hessian diagonal and the groups follow that order (``g_idx`` records
each input row's group). Returns the canonical ``QuantizedWeight`` (fp16 scales, real zeros).
"""

from __future__ import annotations

import torch

from valora.quant.reference import pack_rows
from valora.quant.types import QuantizedWeight


def _group_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of one group of columns w [N, g] -> ([N], [N]) (same rule as RTN)."""
    maxq = (1 << bits) - 1
    lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    if sym:
        half = 1 << (bits - 1)
        scale = torch.maximum(lo.abs(), hi) / (half - 1)
        zero = torch.full_like(scale, half)
    else:
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / torch.where(scale > 0, scale, 1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).half().float()
    return scale, zero.clamp(0, maxq)


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    block: int = 128,
) -> QuantizedWeight:
    w = weight.detach().float().clone()  # [N, K]
    n, k = w.shape
    group_size = k if group_size == -1 else group_size
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    maxq = (1 << bits) - 1
    codes = torch.zeros(n, k, dtype=torch.int32)
    scales, zeros = [], []
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(n, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:  # group parameters from the error-corrected weights
                group = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :group_size]
                scale, zero = _group_params(group, bits, sym)
                scales.append(scale)
                zeros.append(zero)
            q = (torch.round(w1[:, i] / scale) + zero).clamp(0, maxq)
            codes[:, col] = q.to(torch.int32)
            err = (w1[:, i] - (q - zero) * scale) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inverse = torch.argsort(perm)
    g_idx = (inverse // group_size).to(torch.int32)  # group of each original input row
    out = QuantizedWeight(
        pack_rows(codes[:, inverse].t().contiguous(), bits),
        torch.stack(scales).half(),
        torch.stack(zeros).to(torch.int32),
        g_idx if act_order else None,
        bits,
        group_size,
    )
    out.validate()
    return out
