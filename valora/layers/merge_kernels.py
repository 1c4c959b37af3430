"""Folding one adapter slice into a base weight: ``out = W0 + scale * B^T A`` in one pass.

Shapes: W0 / out [N, K] (rows of one slice of a stacked weight), B rows [r, N] (stride: the pool
row), A rows [r, K]; the product accumulates in fp32 and is added to W0 in fp32, rounded once.

- ``torch_merge_slice``: ``torch.addmm`` (the CPU path and the reference).
- ``triton_merge_slice`` (GPU): one program per [BLOCK_N, BLOCK_K] tile reads its W0 tile and the
  tile's r rows of B and A and writes out: W0 is read once and out written once, the memory floor
  (``torch.addmm`` with a separate output copies W0 first, then reads and writes it again).
  Tested against the torch path in ``test/adapters/test_gpu_lora.py``.
"""

from __future__ import annotations

import torch


def torch_merge_slice(out, w0, b_rows, a_rows, scale: float) -> None:
    torch.addmm(w0, b_rows.t(), a_rows, alpha=scale, out=out)


def triton_merge_slice(out, w0, b_rows, a_rows, scale: float) -> None:
    import triton

    from valora.layers.triton_merge import merge_kernel

    n, k = w0.shape
    rank = a_rows.shape[0]
    block_r = max(16, triton.next_power_of_2(rank))
    block_n, block_k = 64, 128
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    merge_kernel[grid](
        w0, out, b_rows, a_rows, n, k, rank, w0.stride(0), out.stride(0), b_rows.stride(0),
        a_rows.stride(0), scale, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=block_r,
        FP32=w0.dtype == torch.float32, num_warps=4,
    )  # fmt: skip


def merge_slice_for(device: torch.device):
    """The strategy, chosen once: Triton on CUDA, torch elsewhere."""
    return triton_merge_slice if device.type == "cuda" else torch_merge_slice
