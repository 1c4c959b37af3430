"""W4A16 / W8A16 GEMM in Triton: y = x @ W^T with W dequantized inside the kernel.

x [M, K] fp16/bf16, W a ``QuantizedWeight`` (canonical layout, ``valora.quant.types``), y [M, N]
in x's dtype. Grid (M tiles, N tiles, SPLIT_K): a program streams BLOCK_K rows of the packed
weight ([BLOCK_K // pack, BLOCK_N] int32, each loaded once per K tile and unpacked with shifts),
subtracts the zero point and multiplies by the scale of each row's group (one group per tile
when the tile lies inside a group and there is no act-order; a per-row gather through g_idx
otherwise), and accumulates ``x_tile @ w_tile`` on tensor cores in fp32. With SPLIT_K > 1 (small
M: too few output tiles to fill the GPU) the K splits add into an fp32 buffer with atomics.
Tested against ``valora.quant.reference.dequantize`` + matmul (``test/quant``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from valora.quant.types import QuantizedWeight


@triton.jit
def _qgemm_kernel(
    x_ptr, qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, y_ptr,
    M, N, K, group_size, k_per_split, stride_xm, stride_ym,
    BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, TILE_GROUPS: tl.constexpr, HAS_GIDX: tl.constexpr,
):  # fmt: skip
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    k_begin = tl.program_id(2) * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=m_ok[:, None] & k_ok[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        # each packed word once: [BLOCK_K // PACK, BLOCK_N], unpacked to [BLOCK_K, BLOCK_N]
        offs_p = k0 // PACK + tl.arange(0, BLOCK_K // PACK)
        packed = tl.load(
            qw_ptr + offs_p[:, None] * N + offs_n[None, :],
            mask=(offs_p * PACK < k_end)[:, None] & n_ok[None, :],
            other=0,
        )
        shifts = tl.arange(0, PACK) * BITS
        q = (packed[:, None, :] >> shifts[None, :, None]) & MASK  # [BLOCK_K // PACK, PACK, BN]
        q = tl.reshape(q, (BLOCK_K, BLOCK_N))
        if TILE_GROUPS:  # the whole tile is one group: one scale / zero row
            g = k0 // group_size
            s = tl.load(scales_ptr + g * N + offs_n, mask=n_ok, other=0.0)[None, :]
            z = tl.load(zeros_ptr + g * N + offs_n, mask=n_ok, other=0)[None, :]
        else:
            if HAS_GIDX:
                g = tl.load(gidx_ptr + offs_k, mask=k_ok, other=0)
            else:
                g = offs_k // group_size
            gn = g[:, None] * N + offs_n[None, :]
            s = tl.load(scales_ptr + gn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            z = tl.load(zeros_ptr + gn, mask=k_ok[:, None] & n_ok[None, :], other=0)
        w = ((q - z).to(tl.float32) * s.to(tl.float32)).to(x.dtype)  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(x, w)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=mask, sem="relaxed")


@triton.jit
def _dequant_kernel(qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, out_ptr, N, K, group_size,
                    BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_GIDX: tl.constexpr):  # fmt: skip
    """out[k, n] = W[n, k] ([K, N], the layout x @ out wants), one [BLOCK_K, BLOCK_N] tile."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_p = tl.program_id(0) * (BLOCK_K // PACK) + tl.arange(0, BLOCK_K // PACK)
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok, n_ok = offs_k < K, offs_n < N
    packed = tl.load(
        qw_ptr + offs_p[:, None] * N + offs_n[None, :],
        mask=(offs_p * PACK < K)[:, None] & n_ok[None, :],
        other=0,
    )
    shifts = tl.arange(0, PACK) * BITS
    q = tl.reshape((packed[:, None, :] >> shifts[None, :, None]) & MASK, (BLOCK_K, BLOCK_N))
    if HAS_GIDX:
        g = tl.load(gidx_ptr + offs_k, mask=k_ok, other=0)
    else:
        g = offs_k // group_size
    gn = g[:, None] * N + offs_n[None, :]
    mask = k_ok[:, None] & n_ok[None, :]
    s = tl.load(scales_ptr + gn, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + gn, mask=mask, other=0)
    w = (q - z).to(tl.float32) * s
    tl.store(out_ptr + offs_k[:, None] * N + offs_n[None, :], w.to(out_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip


def dequantize_kn(w: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight dequantized to [K, N] in ``dtype`` (one pass: read packed, write dense)."""
    k, n = w.in_features, w.out_features
    out = torch.empty(k, n, device=w.qweight.device, dtype=dtype)
    block_k, block_n = 64, 128
    grid = (triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    _dequant_kernel[grid](
        w.qweight, w.scales, w.zeros, w.g_idx if w.g_idx is not None else w.zeros, out, n, k,
        w.group_size, BITS=w.bits, BLOCK_K=block_k, BLOCK_N=block_n,
        HAS_GIDX=w.g_idx is not None, num_warps=4,
    )  # fmt: skip
    return out


def default_config(m: int, n: int, k: int, group_size: int, num_sms: int) -> dict:
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 64 if m <= 64 else 128
    block_k = 128 if group_size % 128 == 0 else 64
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split_k = max(1, min(k // (4 * block_k), triton.cdiv(2 * num_sms, tiles)))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k,
            "num_warps": 4, "num_stages": 3}  # fmt: skip


def quant_matmul(x: torch.Tensor, w: QuantizedWeight, config: dict | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x.dtype (in-kernel dequantization)."""
    m, k = x.shape
    n = w.out_features
    if k != w.in_features:
        raise ValueError(f"x has K={k}, the weight K={w.in_features}")
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or default_config(m, n, k, w.group_size, _num_sms(x.device))
    split = cfg["SPLIT_K"]
    block_k = cfg["BLOCK_K"]
    # K splits in whole BLOCK_K tiles (multiples of pack), so a tile never straddles a split
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    tile_groups = w.g_idx is None and w.group_size % block_k == 0
    y = torch.zeros(m, n, device=x.device, dtype=torch.float32) if split > 1 else (
        torch.empty(m, n, device=x.device, dtype=x.dtype))  # fmt: skip
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
    _qgemm_kernel[grid](
        x, w.qweight, w.scales, w.zeros, w.g_idx if w.g_idx is not None else w.zeros, y,
        m, n, k, w.group_size, k_per_split, x.stride(0), y.stride(0),
        BITS=w.bits, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=block_k,
        SPLIT_K=split, TILE_GROUPS=tile_groups, HAS_GIDX=w.g_idx is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y.to(x.dtype) if split > 1 else y


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count
