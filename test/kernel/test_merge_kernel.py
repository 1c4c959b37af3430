"""The Triton merge kernel (``out = W0 + scale * B^T A``) against its torch twin (addmm), on
fresh random inputs with the output poisoned; strided B and A rows as the pool holds them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from valora.layers.merge_kernels import torch_merge_slice, triton_merge_slice  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def run_case(n: int, k: int, rank: int, dtype, device, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(n, k, generator=gen).to(device, dtype)
    b_buf = torch.randn(rank + 5, n + 7, generator=gen).to(device, dtype)  # pool rows, wider
    a_buf = torch.randn(rank + 5, k, generator=gen).to(device, dtype) / k**0.5
    b_rows, a_rows = b_buf[2 : 2 + rank, 3 : 3 + n], a_buf[2 : 2 + rank]
    want = torch.empty(n, k, device=device)  # fp32 reference
    torch_merge_slice(want, w0.float(), b_rows.float(), a_rows.float(), 0.75)
    got = torch.full_like(w0, float("nan"))
    triton_merge_slice(got, w0, b_rows, a_rows, 0.75)
    err = ((got.float() - want.float()).abs() / (want.float().abs() + 1)).max()
    assert err < TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, k, rank", [(48, 160, 8), (130, 64, 32)])
def test_merge_kernel_cpu_interpreter(dtype, n, k, rank):
    if torch.cuda.is_available():
        pytest.skip("the GPU variant covers it")
    run_case(n, k, rank, dtype, "cpu", seed=n)


@pytest.mark.gpu
@pytest.mark.parametrize("n, k, rank", [(3584, 3584, 64), (18944, 3584, 16), (512, 3584, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_merge_kernel_gpu(n, k, rank, dtype):
    run_case(n, k, rank, dtype, "cuda", seed=k)
