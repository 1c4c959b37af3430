"""The Triton kernel of ``valora.layers.merge_kernels.triton_merge_slice``."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_kernel(
    w0_ptr, out_ptr, b_ptr, a_ptr, N, K, R, stride_w, stride_out, stride_b, stride_a, scale,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, FP32: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    b = tl.load(
        b_ptr + offs_r[:, None] * stride_b + offs_n[None, :],
        mask=r_ok[:, None] & (offs_n[None, :] < N),
        other=0.0,
    )  # [BLOCK_R, BLOCK_N]
    a = tl.load(
        a_ptr + offs_r[:, None] * stride_a + offs_k[None, :],
        mask=r_ok[:, None] & (offs_k[None, :] < K),
        other=0.0,
    )  # [BLOCK_R, BLOCK_K]
    if FP32:
        delta = tl.dot(tl.trans(b), a, input_precision="ieee")  # [BLOCK_N, BLOCK_K] fp32
    else:
        delta = tl.dot(tl.trans(b), a)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    w = tl.load(w0_ptr + offs_n[:, None] * stride_w + offs_k[None, :], mask=mask, other=0.0)
    merged = w.to(tl.float32) + scale * delta
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :],
             merged.to(out_ptr.dtype.element_ty), mask=mask)  # fmt: skip
