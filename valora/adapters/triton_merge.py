"""The Triton kernel of ``valora.adapters.merge_kernels.triton_merge_layers``."""

from __future__ import annotations

import triton
import triton.language as tl


# fmt: off
@triton.jit
def merge_layers_kernel(
    pointers, ranks_ptr, scales_ptr, num_layers, N, K,
    stride_out, stride_w, stride_a, stride_b,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    DTYPE: tl.constexpr, FP32: tl.constexpr,
):
    """pointers [4, num_layers] int64: out, W0, A rows, B rows of each layer."""
    layer = tl.program_id(2)
    out_ptr = tl.load(pointers + layer).to(tl.pointer_type(DTYPE))
    w0_ptr = tl.load(pointers + num_layers + layer).to(tl.pointer_type(DTYPE))
    a_ptr = tl.load(pointers + 2 * num_layers + layer).to(tl.pointer_type(DTYPE))
    b_ptr = tl.load(pointers + 3 * num_layers + layer).to(tl.pointer_type(DTYPE))
    rank = tl.load(ranks_ptr + layer)
    scale = tl.load(scales_ptr + layer)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < rank
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
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], merged.to(DTYPE),
             mask=mask)
# fmt: on
