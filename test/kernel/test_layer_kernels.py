"""Triton layer kernels (norm, add+norm, silu_and_mul, rotary) against ``TorchKernels`` on fresh
random inputs; every output the kernels allocate is poisoned with NaN first.

Without CUDA the kernels run in the Triton CPU interpreter (fp32/fp16, small sizes that are not
powers of two); ``gpu`` tests use the real Qwen2-VL sizes in bf16/fp16, where the kernels must
match the torch ops bit for bit except for the fp32 sum order inside the norm.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from valora.layers import triton_kernels  # noqa: E402
from valora.layers.kernel_choice import get_kernels, kernels_for  # noqa: E402
from valora.layers.kernels import TorchKernels  # noqa: E402
from valora.layers.triton_kernels import TritonKernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_DTYPES = [torch.float32, torch.float16]
# fp16/bf16 results may differ by one rounding step of the dtype (the norm's fp32 sum order)
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    def nan_output(rows, cols, like):
        return torch.full((rows, cols), float("nan"), dtype=like.dtype, device=like.device)

    monkeypatch.setattr(triton_kernels, "_new_output", nan_output)


def _randn(*shape, dtype, seed, device=DEVICE, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)


def _check_norms(num_tokens, hidden, dtype, seed, device=DEVICE):
    x = _randn(num_tokens, hidden, dtype=dtype, seed=seed, device=device, scale=3.0)
    residual = _randn(num_tokens, hidden, dtype=dtype, seed=seed + 1, device=device)
    weight = _randn(hidden, dtype=dtype, seed=seed + 2, device=device)
    want = TorchKernels.rms_norm(x, weight, 1e-6)
    torch.testing.assert_close(TritonKernels.rms_norm(x, weight, 1e-6), want, **TOL[dtype])
    got_y, got_sum = TritonKernels.add_rms_norm(x, residual, weight, 1e-6)
    want_y, want_sum = TorchKernels.add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(got_sum, want_sum, atol=0, rtol=0)  # one rounding, same as torch
    torch.testing.assert_close(got_y, want_y, **TOL[dtype])


def _check_silu(num_tokens, inter, dtype, seed, device=DEVICE):
    gate_up = _randn(num_tokens, 2 * inter, dtype=dtype, seed=seed, device=device, scale=4.0)
    torch.testing.assert_close(
        TritonKernels.silu_and_mul(gate_up), TorchKernels.silu_and_mul(gate_up), **TOL[dtype]
    )


def _check_rotary(num_tokens, num_heads, num_kv_heads, head_dim, dtype, seed, device=DEVICE):
    """q and k are strided views into one fused qkv row, as in the model; v must not change."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = _randn(num_tokens, q_size + 2 * kv_size, dtype=dtype, seed=seed, device=device)
    angles = _randn(num_tokens, head_dim // 2, dtype=torch.float32, seed=seed + 1, device=device)
    angles = torch.cat((angles, angles), dim=-1) * 50
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(num_tokens, num_heads, head_dim)
    k = k.view(num_tokens, num_kv_heads, head_dim)
    want_q, want_k = TorchKernels.rotary(q.clone(), k.clone(), cos, sin)
    v_before = v.clone()
    got_q, got_k = TritonKernels.rotary(q, k, cos, sin)
    assert got_q.data_ptr() == q.data_ptr()  # rotated in place
    torch.testing.assert_close(got_q, want_q, **TOL[dtype])
    torch.testing.assert_close(got_k, want_k, **TOL[dtype])
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("num_tokens,hidden", [(1, 48), (7, 64), (5, 100)])
def test_norms_match_torch(dtype, num_tokens, hidden):
    _check_norms(num_tokens, hidden, dtype, seed=num_tokens * hidden)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("num_tokens,inter", [(1, 24), (6, 96), (3, 1500)])
def test_silu_and_mul_matches_torch(dtype, num_tokens, inter):
    _check_silu(num_tokens, inter, dtype, seed=num_tokens + inter)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("shape", [(1, 4, 2, 16), (5, 6, 2, 24), (3, 3, 3, 8)])
def test_rotary_matches_torch(dtype, shape):
    _check_rotary(*shape, dtype, seed=sum(shape))


def test_zero_rows_and_bad_shapes():
    x = torch.empty(0, 32, device=DEVICE)
    assert TritonKernels.rms_norm(x, torch.ones(32, device=DEVICE), 1e-6).shape == (0, 32)
    with pytest.raises(ValueError, match="weight"):
        TritonKernels.rms_norm(torch.ones(2, 32, device=DEVICE), torch.ones(16), 1e-6)
    with pytest.raises(ValueError, match="even"):
        TritonKernels.silu_and_mul(torch.ones(2, 7, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        TritonKernels.add_rms_norm(x, torch.empty(0, 16, device=DEVICE), torch.ones(32), 1e-6)


def test_registry():
    assert get_kernels("torch") is TorchKernels
    assert get_kernels("triton") is TritonKernels
    assert kernels_for("cpu") is TorchKernels
    with pytest.raises(ValueError, match="unknown kernels"):
        get_kernels("cuda-magic")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 32, 257, 4096])
def test_gpu_real_sizes(dtype, num_tokens):
    """qwen2-vl-7b sizes: hidden 3584, intermediate 18944, 28 q / 4 kv heads of 128."""
    _check_norms(num_tokens, 3584, dtype, seed=num_tokens, device="cuda")
    _check_silu(num_tokens, 18944, dtype, seed=num_tokens, device="cuda")
    _check_rotary(num_tokens, 28, 4, 128, dtype, seed=num_tokens, device="cuda")
    assert kernels_for("cuda") is TritonKernels


def test_tiny_model_same_hidden_states_with_either_strategy():
    """The whole language model (fp32, CPU interpreter) gives the same output with both."""
    from valora.layers.attention import AttentionMetadata
    from valora.weights import load_model

    model = load_model("tiny", torch.float32, DEVICE)
    ids = torch.randint(0, 1000, (9,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    positions = torch.arange(9, device=DEVICE).expand(3, 9)
    meta = AttentionMetadata.for_lengths([4, 5])
    want = model(ids, positions, meta)
    model.kernels = TritonKernels
    torch.testing.assert_close(model(ids, positions, meta), want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
def test_write_kv_cache_matches_torch_write(dtype):
    """Strided k/v (views into a fused qkv output) into a paged layer; other slots untouched."""
    from valora.layers.paged_attention import KVCache
    from valora.layers.triton_kernels import write_kv_cache

    num_tokens, hkv, d = 5, 2, 24
    qkv = _randn(num_tokens, 4 * d + 2 * hkv * d, dtype=dtype, seed=3)
    k = qkv[:, 4 * d : 4 * d + hkv * d].view(num_tokens, hkv, d)
    v = qkv[:, 4 * d + hkv * d :].view(num_tokens, hkv, d)
    slots = torch.tensor([3, 17, 0, 9, 30], device=DEVICE)
    want, got = (KVCache(1, 8, 4, hkv, d, dtype, DEVICE) for _ in range(2))
    for cache in (want, got):
        cache.k.copy_(_randn(*cache.k.shape, dtype=dtype, seed=4))
        cache.v.copy_(_randn(*cache.v.shape, dtype=dtype, seed=5))
    want.write(0, k, v, slots)
    write_kv_cache(k, v, got.k[0], got.v[0], slots)
    assert torch.equal(got.k, want.k) and torch.equal(got.v, want.v)
