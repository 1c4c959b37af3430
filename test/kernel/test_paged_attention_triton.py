"""Triton paged attention against ``paged_attention_reference`` (fp32 reference from the same
inputs), fresh random inputs, outputs poisoned with NaN before each run.

Without CUDA the kernels run in the Triton CPU interpreter (fp32/fp16 only: the interpreter
mis-reads bf16); the same small cases run compiled on a GPU. ``gpu`` tests: real dims, bf16/fp16.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
pytest.importorskip("triton")

from valora.layers.paged_attention import (  # noqa: E402
    KVCache,
    PagedAttentionMetadata,
    TorchPagedAttention,
    paged_attention_reference,
)
from valora.layers.triton_attention import TritonPagedAttention, paged_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_DTYPES = [torch.float32, torch.float16]
SMALL_SHAPES = [(4, 2, 16, 4), (4, 4, 32, 16), (6, 2, 24, 4)]  # (Hq, Hkv, D, block_size)
TOL = {
    torch.float32: {"atol": 2e-5, "rtol": 1e-4},
    torch.float16: {"atol": 3e-3, "rtol": 1e-2},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}


def _setup(dtype, shape, query_lens, context_lens, seed, device=DEVICE):
    """A filled cache (garbage in unused blocks), shuffled block tables, new tokens written."""
    hq, hkv, d, bs = shape
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-c // bs) for c in context_lens)
    num_blocks = need + 3
    cache = KVCache(1, num_blocks, bs, hkv, d, dtype, device)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)  # non-contiguous, shuffled blocks
    tables = [[free.pop() for _ in range(-(-c // bs))] for c in context_lens]
    meta = PagedAttentionMetadata.build(query_lens, context_lens, tables, bs, device)
    t = sum(query_lens)
    q = torch.randn(t, hq, d, generator=gen).to(device, dtype)
    k = torch.randn(t, hkv, d, generator=gen).to(device, dtype)
    v = torch.randn(t, hkv, d, generator=gen).to(device, dtype)
    cache.write(0, k, v, meta.slot_mapping)
    return cache, meta, q


def _check(dtype, shape, query_lens, context_lens, seed=0, num_kv_splits=None):
    cache, meta, q = _setup(dtype, shape, query_lens, context_lens, seed)
    scale = shape[2] ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_attention(q, cache.k[0], cache.v[0], meta, scale, out=out, num_kv_splits=num_kv_splits)
    want = paged_attention_reference(q.float(), cache, 0, meta, scale)
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("num_kv_splits", [None, 3])
def test_decode(dtype, shape, num_kv_splits):
    _check(dtype, shape, [1, 1, 1, 1], [1, 5, 17, 40], num_kv_splits=num_kv_splits)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_mixed_chunked_prefill_decode_and_pure_prefill(dtype, shape):
    # cached prefixes crossing block boundaries, a decode row, a pure prefill, > BLOCK_M tokens
    _check(dtype, shape, [3, 9, 1, 6, 21], [11, 25, 17, 6, 38], seed=1)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
def test_pure_prefill(dtype):
    _check(dtype, (4, 2, 16, 4), [5, 17, 33], [5, 17, 33], seed=2)


def test_backend_matches_torch_backend():
    shape, query_lens, context_lens = (4, 2, 16, 4), [1, 4, 2], [9, 4, 13]
    cache, meta, _ = _setup(torch.float32, shape, query_lens, context_lens, seed=3)
    twin = KVCache(1, cache.num_blocks, cache.block_size, 2, 16, torch.float32, DEVICE)
    twin.k.copy_(cache.k)
    twin.v.copy_(cache.v)
    t = sum(query_lens)
    q, k, v = torch.randn(t, 4, 16), torch.randn(t, 2, 16), torch.randn(t, 2, 16)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    got = TritonPagedAttention(cache)(0, q, k, v, meta)
    want = TorchPagedAttention(twin)(0, q, k, v, meta)
    assert got.shape == (t, 4 * 16)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(cache.k, twin.k)


def test_rejects_bad_shapes():
    cache, meta, q = _setup(torch.float32, (4, 2, 16, 4), [1, 2], [3, 5], seed=4)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(q[:, :3], cache.k[0], cache.v[0], meta, 0.25)
    with pytest.raises(ValueError, match="tokens"):
        paged_attention(q[:2], cache.k[0], cache.v[0], meta, 0.25)
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(q[..., :8], cache.k[0], cache.v[0], meta, 0.25)


def _random_lens(rng, n, query_range, prefix_range):
    query_lens = [rng.randint(*query_range) for _ in range(n)]
    context_lens = [ql + rng.randint(*prefix_range) for ql in query_lens]
    return query_lens, context_lens


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(28, 4), (12, 2)])
def test_gpu_decode_batch(dtype, heads):
    rng = random.Random(5)
    context_lens = [rng.randint(1, 4096) for _ in range(62)] + [1, 4096]
    _check(dtype, (*heads, 128, 16), [1] * 64, context_lens, seed=5)
    _check(dtype, (*heads, 128, 16), [1] * 3, [4096, 3000, 17], seed=6)  # few seqs: many splits


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(28, 4), (12, 2)])
def test_gpu_prefill_batch(dtype, heads):
    rng = random.Random(7)
    query_lens, context_lens = _random_lens(rng, 6, (256, 2048), (0, 1024))
    query_lens += [1, 1, 300]  # decode rows and a pure prefill in the same batch
    context_lens += [2000, 7, 300]
    _check(dtype, (*heads, 128, 16), query_lens, context_lens, seed=7)
