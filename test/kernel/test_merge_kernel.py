"""The Triton merge kernel (``out_l = W0_l + scale_l * B_l^T A_l`` over all layers in one launch)
against its torch twin (addmm per layer), on fresh random inputs with the outputs poisoned; A
and B as strided row views of a pool, per-layer ranks including 0 (a plain copy of W0). The
kernel reads per-layer pointer tables, so it runs on the GPU only; the CPU suite tests the twin
through the engine (``test/adapters/test_lifecycle.py``)."""

from __future__ import annotations

import pytest
import torch

from valora.adapters.merge_kernels import SliceMerge, torch_merge_layers, triton_merge_layers

TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


def make_job(n: int, k: int, ranks: list[int], dtype, device, seed: int) -> SliceMerge:
    gen = torch.Generator().manual_seed(seed)
    rows = sum(ranks) + 8
    a_buf = (torch.randn(rows, k, generator=gen) / k**0.5).to(device, dtype)
    b_buf = torch.randn(rows, n + 40, generator=gen).to(device, dtype)  # wider: strided rows
    starts = [sum(ranks[:i]) + 3 for i in range(len(ranks))]
    return SliceMerge(
        outs=[torch.full((n, k), float("nan"), device=device, dtype=dtype) for _ in ranks],
        pristine=[torch.randn(n, k, generator=gen).to(device, dtype) for _ in ranks],
        a_rows=[a_buf[s : s + r] for s, r in zip(starts, ranks)],
        b_rows=[b_buf[s : s + r, 20 : 20 + n] for s, r in zip(starts, ranks)],
        scales=[0.5 + i for i in range(len(ranks))],
    )


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(3584, 3584), (18944, 3584), (512, 3584)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_merge_kernel_matches_torch(n, k, dtype):
    ranks = [64, 16, 0, 128]
    job = make_job(n, k, ranks, dtype, "cuda", seed=n)
    triton_merge_layers(job)
    want = make_job(n, k, ranks, torch.float32, "cuda", seed=n)  # same values, fp32 math
    torch_merge_layers(want)
    for got, ref, w0, r in zip(job.outs, want.outs, job.pristine, ranks):
        if r == 0:
            assert torch.equal(got, w0)
        err = ((got.float() - ref).abs() / (ref.abs() + 1)).max()
        assert err < TOL[dtype], f"rank {r}: relative error {err:.2e}"
