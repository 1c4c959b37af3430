"""ATMM ops (shrink, expand, add_lora) against ``atmm.ref`` on fresh random inputs.

Sweeps dtype x mixed ranks {8..128} x popularity (distinct, uniform, zipf 1.5, identical, one hot
adapter with 0.8 of the requests) x token counts (decode 1-8, prefill 256+), stacked slices,
segments with no adapter, empty segments and rows past the last segment; both kernel paths (tile,
GEMV) and split-K. Outputs are poisoned: v starts as NaN (only the defined entries are compared,
the rest must not leak into y), and rows y must leave alone are compared bit for bit.

Without CUDA the kernels run in the Triton CPU interpreter (fp32/fp16, small K/N); ``gpu`` tests
run the real Qwen2-VL-7B sizes in bf16/fp16.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from atmm.ops.fused import launch_fused  # noqa: E402
from atmm.ops.lora import add_lora, lora_expand, lora_shrink  # noqa: E402
from atmm.ref import add_lora_ref, lora_shrink_ref  # noqa: E402
from atmm.types import LoRASegments, validate_segments  # noqa: E402
from atmm.workloads import POPULARITIES, make_segments, make_weights, mixed_ranks  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # x output scale
EXTRA_ROWS = 3  # rows past the last segment: must stay untouched


def _case(request_lens, popularity, dtype, k, slices, seed, num_base=1, device=DEVICE):
    segs, num_adapters = make_segments(request_lens, popularity, device, seed, num_base)
    ranks = mixed_ranks(max(num_adapters, 2), seed)
    w = make_weights(ranks, k, slices, dtype, device, seed, max_rank=128)
    num_tokens = sum(request_lens) + num_base + EXTRA_ROWS
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_tokens, k, generator=gen).to(device, dtype)
    y = torch.randn(num_tokens, sum(slices), generator=gen).to(device, dtype)
    validate_segments(segs, num_tokens, w)
    return segs, w, x, y


def _untouched_rows(segs: LoRASegments) -> list[int]:
    """Rows of no-adapter segments and rows past the last segment."""
    indptr, slots = segs.seg_indptr.tolist(), segs.seg_slots.tolist()
    rows = [t for i, s in enumerate(slots) if s < 0 for t in range(indptr[i], indptr[i + 1])]
    return rows + list(range(indptr[-1], indptr[-1] + EXTRA_ROWS))


def _check_add_lora(segs, w, x, y, shrink_cfg=None, expand_cfg=None):
    want = add_lora_ref(y, x, w, segs)
    v = torch.full((x.shape[0], w.num_slices, w.max_rank), float("nan"), device=x.device)
    lora_shrink(x, w, segs, out=v, config=shrink_cfg)
    _check_v(v, lora_shrink_ref(x, w, segs), w, segs)
    got = lora_expand(v, y.clone(), w, segs, config=expand_cfg)
    _assert_matches_ref(got, want, y, segs)


def _assert_matches_ref(got, want, y, segs):
    """Close to the reference relative to the output scale; untouched rows bit for bit."""
    scale = want.float().abs().max()
    torch.testing.assert_close(got.float() / scale, want.float() / scale, atol=TOL[y.dtype], rtol=0)
    rows = _untouched_rows(segs)
    assert torch.equal(got[rows], y[rows])


def _check_v(got, want, w, segs):
    """Compare the defined entries only: rows with an adapter, ranks below the slot's rank."""
    indptr, slots, ranks = segs.seg_indptr.tolist(), segs.seg_slots.tolist(), w.ranks.tolist()
    for i, slot in enumerate(slots):
        lo, hi = indptr[i], indptr[i + 1]
        if slot >= 0 and hi > lo:
            r = ranks[slot]
            torch.testing.assert_close(got[lo:hi, :, :r], want[lo:hi, :, :r], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("popularity", POPULARITIES)
@pytest.mark.parametrize("num_requests", [1, 3, 8])
def test_decode(dtype, popularity, num_requests):
    segs, w, x, y = _case([1] * num_requests, popularity, dtype, 64, [32, 16, 16], num_requests)
    _check_add_lora(segs, w, x, y)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("popularity", ["distinct", "zipf", "hot"])
def test_prefill(dtype, popularity):
    lens = [96, 33, 127] if popularity != "hot" else [60] * 5
    segs, w, x, y = _case(lens, popularity, dtype, 64, [48], seed=len(lens))
    _check_add_lora(segs, w, x, y)


def test_prefill_1024_tokens_one_adapter():
    segs, w, x, y = _case([1024], "identical", torch.float16, 32, [16, 16], seed=5, num_base=0)
    _check_add_lora(segs, w, x, y)


@pytest.mark.parametrize("path", ["tile", "gemv"])
@pytest.mark.parametrize("split_k", [1, 3])
def test_paths_and_split_k(path, split_k):
    """Every kernel variant, forced, on one mixed batch (decode and prefill rows together)."""
    segs, w, x, y = _case([1, 5, 2, 40, 1], "distinct", torch.float32, 96, [32, 16], seed=7)
    shrink = {
        "path": path,
        "BLOCK_M": 16,
        "BLOCK_K": 32,
        "BLOCK_R": 32,
        "SPLIT_K": split_k,
        "num_warps": 4,
        "num_stages": 1,
    }
    expand = {
        "path": path,
        "BLOCK_M": 16,
        "BLOCK_K": 16,
        "BLOCK_N": 16,
        "N_TILES": 2,
        "num_warps": 4,
        "num_stages": 1,
    }
    _check_add_lora(segs, w, x, y, shrink, expand)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize(
    "lens,popularity", [([1] * 5, "distinct"), ([1, 40, 7, 1], "hot"), ([70, 33], "uniform")]
)
def test_fused_kernel(dtype, lens, popularity):
    """The fused shrink+expand kernel (v never leaves registers) against the reference."""
    segs, w, x, y = _case(lens, popularity, dtype, 64, [32, 16, 16], seed=len(lens))
    config = {
        "BLOCK_M": 16,
        "BLOCK_K": 32,
        "BLOCK_N": 16,
        "N_TILES": 2,
        "num_warps": 4,
        "num_stages": 1,
    }
    got = y.clone()
    launch_fused(x, w, got, segs, config)
    _assert_matches_ref(got, add_lora_ref(y, x, w, segs), y, segs)


def test_add_lora_takes_the_fused_kernel_only_where_the_table_says_so(monkeypatch):
    import atmm.ops.lora as ops

    calls = []
    monkeypatch.setattr(ops, "launch_fused", lambda *args: calls.append("fused"))
    segs, w, x, y = _case([1, 1], "distinct", torch.float32, 32, [16], seed=1)
    add_lora(y.clone(), x, w, segs)  # no tuned entry on this device: separate kernels
    assert calls == []
    monkeypatch.setattr(ops, "fused_config", lambda *args: {"path": "fused"})
    add_lora(y.clone(), x, w, segs)
    assert calls == ["fused"]


def test_empty_segments_and_padding_segments():
    """Empty segments (graph padding repeats the last offset) and slot -1 rows do nothing."""
    w = make_weights([8, 16], 32, [16], torch.float32, DEVICE, seed=3)
    segs = LoRASegments.build([2, 0, 3, 0, 0], [1, 0, -1, 1, 0], DEVICE, max_seg_len=8)
    x, y = torch.randn(6, 32, device=DEVICE), torch.randn(6, 16, device=DEVICE)
    want = add_lora_ref(y, x, w, segs)
    got = add_lora(y.clone(), x, w, segs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[2:], y[2:])


def test_rank_zero_slot_is_a_no_op():
    w = make_weights([0, 16], 32, [16], torch.float32, DEVICE, seed=4, max_rank=16)
    segs = LoRASegments.build([3, 2], [0, 1], DEVICE)
    x, y = torch.randn(5, 32, device=DEVICE), torch.randn(5, 16, device=DEVICE)
    got = add_lora(y.clone(), x, w, segs)
    assert torch.equal(got[:3], y[:3])
    torch.testing.assert_close(got, add_lora_ref(y, x, w, segs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "lens,slots,max_len,match",
    [
        ([2, -1], [0, 0], None, "lengths"),
        ([2, 2], [0], None, "slots"),
        ([2, 2], [0, -2], None, "slots"),
        ([5, 2], [0, 1], 4, "max_seg_len"),
    ],
)
def test_malformed_segments_are_rejected(lens, slots, max_len, match):
    with pytest.raises(ValueError, match=match):
        LoRASegments.build(lens, slots, DEVICE, max_seg_len=max_len)


def test_malformed_calls_are_rejected():
    w = make_weights([8, 16], 32, [16, 8], torch.float32, DEVICE, seed=5)
    segs = LoRASegments.build([2, 2], [0, 1], DEVICE)
    x, y = torch.randn(4, 32, device=DEVICE), torch.randn(4, 24, device=DEVICE)
    with pytest.raises(ValueError, match=r"x must be \[T, 32\]"):
        add_lora(y, torch.randn(4, 31, device=DEVICE), w, segs)
    with pytest.raises(ValueError, match="dtypes differ"):
        add_lora(y.half(), x, w, segs)
    with pytest.raises(ValueError, match="int32"):
        bad = LoRASegments(segs.seg_indptr.long(), segs.seg_slots, 2)
        add_lora(y, x, w, bad)
    with pytest.raises(ValueError, match="rows"):
        add_lora(y[:3], x, w, segs)
    with pytest.raises(ValueError, match="cover"):
        validate_segments(LoRASegments.build([4, 4], [0, 1], DEVICE), 4, w)
    with pytest.raises(ValueError, match="outside"):
        validate_segments(LoRASegments.build([2, 2], [0, 2], DEVICE), 4, w)


# ---- GPU: real Qwen2-VL-7B sizes -------------------------------------------------------------
GPU_TARGETS = {"q": [3584], "kv": [512], "gate": [18944], "qkv": [3584, 512, 512]}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("popularity", POPULARITIES)
@pytest.mark.parametrize("target", list(GPU_TARGETS))
def test_gpu_decode_real_sizes(dtype, popularity, target):
    for n in (1, 8, 64):
        segs, w, x, y = _case(
            [1] * n, popularity, dtype, 3584, GPU_TARGETS[target], n, device="cuda"
        )
        _check_add_lora(segs, w, x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("popularity", ["distinct", "uniform", "zipf", "hot"])
@pytest.mark.parametrize("num_tokens", [256, 1024, 8192])
def test_gpu_prefill_real_sizes(dtype, popularity, num_tokens):
    lens = [num_tokens // 4] * 4
    segs, w, x, y = _case(lens, popularity, dtype, 3584, [3584, 512, 512], num_tokens, 2, "cuda")
    _check_add_lora(segs, w, x, y)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_with_new_segments():
    """Captured once at fixed sizes, replayed with other segment contents: same as the ref."""
    dtype, k, slices = torch.bfloat16, 3584, [3584, 512, 512]
    w = make_weights(mixed_ranks(16, 1), k, slices, dtype, "cuda", max_rank=128)
    num_segments, max_len, num_tokens = 16, 4, 64
    x = torch.randn(num_tokens, k, device="cuda", dtype=dtype)
    y0 = torch.randn(num_tokens, sum(slices), device="cuda", dtype=dtype)
    indptr = torch.zeros(num_segments + 1, dtype=torch.int32, device="cuda")
    slots = torch.full((num_segments,), -1, dtype=torch.int32, device="cuda")
    segs = LoRASegments(indptr, slots, max_len)
    y = y0.clone()
    add_lora(y, x, w, segs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        add_lora(y, x, w, segs)
    for seed in range(3):
        step = LoRASegments.build(*_random_table(seed, num_segments, max_len), "cuda", max_len)
        indptr.copy_(step.seg_indptr)
        slots.copy_(step.seg_slots)
        y.copy_(y0)
        graph.replay()
        want = add_lora_ref(y0, x, w, segs)
        scale = want.float().abs().max()
        torch.testing.assert_close(y.float() / scale, want.float() / scale, atol=1.6e-2, rtol=0)


def _random_table(seed, num_segments, max_len):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, max_len + 1, (num_segments,), generator=gen).tolist()
    slots = torch.randint(-1, 16, (num_segments,), generator=gen).tolist()
    return lens, slots


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lens", [[1] * 8, [1] * 64, [256] * 4])
@pytest.mark.parametrize("target", ["q", "qkv", "gate"])
def test_gpu_fused_kernel_real_sizes(dtype, lens, target):
    segs, w, x, y = _case(
        lens, "distinct", dtype, 3584, GPU_TARGETS[target], len(lens), device="cuda"
    )
    config = {
        "path": "fused",
        "BLOCK_M": 16 if lens[0] == 1 else 64,
        "BLOCK_K": 64,
        "BLOCK_N": 64,
        "N_TILES": 4,
        "num_warps": 4,
        "num_stages": 2,
    }
    got = y.clone()
    launch_fused(x, w, got, segs, config)
    _assert_matches_ref(got, add_lora_ref(y, x, w, segs), y, segs)
