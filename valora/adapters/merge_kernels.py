"""Folding one adapter into base weights: ``out_l = W0_l + scale_l * B_l^T A_l`` for one slice
of one target, over every layer at once.

Per layer l: W0_l / out_l (the same tensor for an in-place merge) are rows [lo, lo + N) of that
layer's [N_total, K] weight (separate tensors per layer, so passed as pointer tables); A_l = rows
[slot, slot + r_l) of the pool's a_buf[l, s] ([r, K]) and B_l the same rows of
b_buf[l][:, lo:lo + N] ([r, N]). The product accumulates in fp32, is added to W0 in fp32 and
rounded once. A layer of rank 0 copies W0.

- ``torch_merge_layers``: ``torch.addmm`` per layer (the CPU path and the reference).
- ``triton_merge_layers`` (GPU): one launch for all layers, one program per [BLOCK_N, BLOCK_K]
  tile of one layer: W0 read once, out written once (the memory floor), and no per-layer host
  launch cost. Tested against the torch path on the GPU (``test/kernel/test_merge_kernel.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernel_tables import pow2_ceil


@dataclass
class SliceMerge:
    """One slice of one target over all layers (host lists, one entry per layer)."""

    outs: list[torch.Tensor]  # out_l [N, K] views
    pristine: list[torch.Tensor]  # W0_l [N, K] views
    a_rows: list[torch.Tensor]  # [r_l, K] views of the pool
    b_rows: list[torch.Tensor]  # [r_l, N] views of the pool
    scales: list[float]


def rank_tile(rank: int) -> int:
    """The merge kernel's rank tile (a constexpr: one compiled kernel per value): the next
    power of two of the largest rank, at least 16."""
    return max(16, pow2_ceil(rank))


def torch_merge_layers(job: SliceMerge) -> None:
    for out, w0, a, b, scale in zip(job.outs, job.pristine, job.a_rows, job.b_rows, job.scales):
        if out.data_ptr() != w0.data_ptr():  # else merged in place (a quantized base's overlay)
            out.copy_(w0)
        if a.shape[0]:
            out.addmm_(b.t(), a, alpha=scale)


def triton_merge_layers(
    job: SliceMerge, block_n: int = 64, block_k: int = 128, num_warps: int = 4
) -> None:
    import triton

    from valora.adapters.triton_merge import merge_layers_kernel

    device, dtype = job.outs[0].device, job.outs[0].dtype
    n, k = job.outs[0].shape
    ranks = [a.shape[0] for a in job.a_rows]
    pointers = torch.tensor(
        [
            [t.data_ptr() for t in job.outs],
            [t.data_ptr() for t in job.pristine],
            [a.data_ptr() for a in job.a_rows],
            [b.data_ptr() for b in job.b_rows],
        ],
        dtype=torch.int64,
    ).to(device, non_blocking=True)
    ranks_t = torch.tensor(ranks, dtype=torch.int32).to(device, non_blocking=True)
    scales_t = torch.tensor(job.scales, dtype=torch.float32).to(device, non_blocking=True)
    block_r = rank_tile(max(ranks))
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k), len(ranks))
    merge_layers_kernel[grid](
        pointers,
        ranks_t,
        scales_t,
        len(ranks),
        n,
        k,
        job.outs[0].stride(0),
        job.pristine[0].stride(0),
        job.a_rows[0].stride(0),
        job.b_rows[0].stride(0),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_R=block_r,
        DTYPE=_TL_DTYPES[dtype],
        FP32=dtype == torch.float32,
        num_warps=num_warps,
    )


def merge_layers_for(device: torch.device):
    """The strategy, chosen once: Triton on CUDA, torch elsewhere."""
    return triton_merge_layers if device.type == "cuda" else torch_merge_layers


def _tl_dtypes() -> dict:
    try:
        import triton.language as tl
    except ImportError:
        return {}
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


_TL_DTYPES = _tl_dtypes()
