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
    k = w.shape[1]
    group_size = k if group_size == -1 else group_size
    w, perm, hinv = _permuted_inverse_hessian(w, hessian, act_order, damp)
    codes, scales, zeros = _quantize_columns(w, hinv, bits, group_size, sym, block)
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


def _permuted_inverse_hessian(
    w: torch.Tensor, hessian: torch.Tensor, act_order: bool, damp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (w [N, K] with dead columns zeroed, in column order; the order perm [K]; the upper
    Cholesky factor of the damped inverse Hessian [K, K], in that order). Zeroes w's dead columns
    in place."""
    k = w.shape[1]
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return w, perm, hinv


def _quantize_columns(
    w: torch.Tensor, hinv: torch.Tensor, bits: int, group_size: int, sym: bool, block: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Quantize w [N, K] (updated in place) column by column in blocks, spreading each column's
    error over the later ones -> (codes [N, K] int32, one scale [N] and zero [N] per group)."""
    n, k = w.shape
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
    return codes, scales, zeros
