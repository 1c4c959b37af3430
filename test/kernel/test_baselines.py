"""Baseline LoRA backends (Punica ``sgmv``, S-LoRA ``mbgmv``, dLoRA ``einsum``) against
``atmm.ref.add_lora_ref`` on fresh random pools and segment tables from ``atmm.workloads``.

Every case mixes ranks 8..128 (max_rank 128; rank rows past a slot's rank hold NaN, which no
backend may read), and adds base requests (slot -1), an empty segment and rows past
``seg_indptr[-1]``. ``y`` starts random; the rows no adapter covers start at known values and
must come back bit for bit (for the Triton backends the same rows of ``x`` hold NaN: never read).
Errors are measured against the output's scale: max |got - want| / max |want|.

Without CUDA the Triton kernels run in the CPU interpreter (fp32/fp16, K 64..320, N 48..64);
``gpu`` tests use real sizes (K=3584, N in {3584, 512, 18944} and stacked qkv, bf16).
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from atmm.backends import get_backend  # noqa: E402
from atmm.baselines import punica_sgmv, slora_mbgmv  # noqa: E402
from atmm.ref import add_lora_ref  # noqa: E402
from atmm.types import LoRASegments, LoRAWeights, validate_segments  # noqa: E402
from atmm.workloads import POPULARITIES, make_segments, make_weights, mixed_ranks  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BASELINES = ("sgmv", "mbgmv", "einsum")
TRITON_BASELINES = ("sgmv", "mbgmv")
# All three keep an intermediate in the input dtype (sgmv/mbgmv: v = x @ A^T; einsum: its
# [T, slots, R] product and delta), so fp16/bf16 carry one rounding more than the reference.
REL_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2.5e-2}
SMALL_DTYPES = (torch.float32, torch.float16)
QKV = [32, 16, 16]


def _weights(num_slots: int, k: int, slices: list[int], dtype, seed: int, device=DEVICE):
    """Mixed-rank pool (max_rank 128) whose rank padding holds NaN."""
    w = make_weights(mixed_ranks(num_slots, seed), k, slices, dtype, device, seed, max_rank=128)
    for slot, rank in enumerate(w.ranks.tolist()):
        w.a[slot, :, rank:] = float("nan")
        w.b[slot, rank:] = float("nan")
    return w


def _segments(request_lens, popularity, seed, num_base=1, device=DEVICE, max_seg_len=None):
    """make_segments plus an empty segment (slot 0) inserted at a random place."""
    segs, num_adapters = make_segments(request_lens, popularity, device, seed, num_base)
    indptr, slots = segs.seg_indptr.tolist(), segs.seg_slots.tolist()
    lens = [b - a for a, b in zip(indptr, indptr[1:])]
    at = random.Random(seed).randrange(len(lens) + 1)
    lens.insert(at, 0)
    slots.insert(at, 0)
    return LoRASegments.build(lens, slots, device, max_seg_len), num_adapters


def _untouched_rows(segs: LoRASegments, num_tokens: int) -> torch.Tensor:
    """[T] bool: rows of slot -1 segments and rows past seg_indptr[-1]."""
    mask = torch.ones(num_tokens, dtype=torch.bool)
    indptr, slots = segs.seg_indptr.tolist(), segs.seg_slots.tolist()
    for i, slot in enumerate(slots):
        if slot >= 0:
            mask[indptr[i] : indptr[i + 1]] = False
    return mask


def _check(name: str, w: LoRAWeights, segs: LoRASegments, extra_rows: int, seed: int) -> float:
    """Run one backend on fresh x / y; check poisoned rows exactly, the rest against the ref."""
    dtype, device = w.a.dtype, w.a.device
    num_tokens = segs.num_tokens + extra_rows
    validate_segments(segs, num_tokens, w)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, w.in_features, generator=gen).to(device, dtype)
    y0 = torch.randn(num_tokens, w.out_features, generator=gen).to(device, dtype)
    keep = _untouched_rows(segs, num_tokens).to(device)
    y0[keep] = -7.25  # known values that must survive exactly
    if name in TRITON_BASELINES:
        x[keep] = float("nan")  # these rows must not even be read
    want = add_lora_ref(y0, x, w, segs)
    backend = get_backend(name)
    y = y0.clone()
    backend.add_lora(y, x, backend.prepare(w), segs)
    assert torch.equal(y[keep], y0[keep]), f"{name} changed rows that have no adapter"
    err = (y.float() - want.float()).abs().max() / want.float().abs().max()
    assert err <= REL_TOL[dtype], f"{name} {dtype}: relative error {err:.2e}"
    return float(err)


@pytest.mark.parametrize("popularity", POPULARITIES)
@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("name", BASELINES)
def test_decode(name, dtype, popularity):
    seed = POPULARITIES.index(popularity) + 10 * SMALL_DTYPES.index(dtype)
    num_requests = random.Random(seed).randint(1, 8)
    segs, num_adapters = _segments([1] * num_requests, popularity, seed, num_base=2)
    _check(name, _weights(num_adapters + 2, 64, QKV, dtype, seed), segs, 3, seed)


@pytest.mark.parametrize("popularity", POPULARITIES)
@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("name", BASELINES)
def test_prefill(name, dtype, popularity):
    seed = 100 + POPULARITIES.index(popularity) + 10 * SMALL_DTYPES.index(dtype)
    lens = [random.Random(seed + i).randint(40, 300) for i in range(3)]
    slices = QKV if popularity in ("uniform", "hot") else [48]
    segs, num_adapters = _segments(lens, popularity, seed, num_base=1)
    _check(name, _weights(num_adapters + 1, 96, slices, dtype, seed), segs, 2, seed)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("name", BASELINES)
def test_short_segments(name, dtype):
    """Segments of 2..8 rows (mbgmv's per-token path with several tokens per segment)."""
    lens = [random.Random(i).randint(2, 8) for i in range(6)]
    segs, num_adapters = _segments(lens, "uniform", 7, num_base=1)
    _check(name, _weights(num_adapters, 64, QKV, dtype, 7), segs, 1, 7)


class _Spy:
    """Counts launches of a Triton kernel (``kernel[grid](...)``)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("split", [True, False])
def test_sgmv_split_k(monkeypatch, split):
    """K=320 spans two 256-wide chunks: split-K with the reduce kernel, or one chunk when the
    unsplit grid fills the GPU (forced here by a 1-SM device)."""
    spy = _Spy(punica_sgmv._sum_chunks_kernel)
    monkeypatch.setattr(punica_sgmv, "_sum_chunks_kernel", spy)
    if not split:
        monkeypatch.setattr(punica_sgmv, "_num_sms", lambda device: 1)
    segs, num_adapters = _segments([1, 1, 50, 1, 70], "zipf", 3, num_base=1)
    _check("sgmv", _weights(num_adapters, 320, QKV, torch.float32, 3), segs, 2, 3)
    assert spy.launches == int(split)


@pytest.mark.parametrize("max_seg_len", [None, 16])
def test_mbgmv_path_choice(monkeypatch, max_seg_len):
    """One-token segments take MBGMV (per token) unless max_seg_len says segments may be long."""
    gemv = _Spy(slora_mbgmv._mbgmv_shrink_kernel)
    gemm = _Spy(slora_mbgmv._mbgmm_shrink_kernel)
    monkeypatch.setattr(slora_mbgmv, "_mbgmv_shrink_kernel", gemv)
    monkeypatch.setattr(slora_mbgmv, "_mbgmm_shrink_kernel", gemm)
    segs, num_adapters = _segments([1] * 5, "distinct", 4, max_seg_len=max_seg_len)
    _check("mbgmv", _weights(num_adapters, 64, QKV, torch.float16, 4), segs, 1, 4)
    assert (gemv.launches, gemm.launches) == ((1, 0) if max_seg_len is None else (0, 1))


@pytest.mark.parametrize("name", BASELINES)
def test_nothing_to_add(name):
    """No segments, only slot -1 segments, zero rows, and a used slot of rank 0."""
    w = _weights(3, 64, QKV, torch.float32, 5)
    backend = get_backend(name)
    prepared = backend.prepare(w)
    for lens, slots, rows in (([], [], 4), ([2, 0, 3], [-1, -1, -1], 6), ([], [], 0)):
        segs = LoRASegments.build(lens, slots, DEVICE)
        x = torch.randn(rows, 64, device=DEVICE)
        y = torch.randn(rows, 64, device=DEVICE)
        want = y.clone()
        backend.add_lora(y, x, prepared, segs)
        assert torch.equal(y, want)
    w0 = LoRAWeights(
        w.a,
        w.b,
        torch.tensor([0, 8, 16], dtype=torch.int32, device=DEVICE),
        w.scalings,
        w.slice_offsets,
    )
    w0.a[0] = float("nan")
    w0.b[0] = float("nan")
    segs = LoRASegments.build([3, 2], [0, 1], DEVICE)
    _check(name, w0, segs, 1, 5)


@pytest.mark.parametrize("name", BASELINES)
def test_malformed_call_raises(name):
    w = _weights(2, 64, QKV, torch.float32, 6)
    backend = get_backend(name)
    prepared = backend.prepare(w)
    segs = LoRASegments.build([2, 1], [0, 1], DEVICE)
    y = torch.zeros(3, 64, device=DEVICE)
    with pytest.raises(ValueError, match="x"):
        backend.add_lora(y, torch.zeros(3, 65, device=DEVICE), prepared, segs)
    bad = LoRASegments(segs.seg_indptr.long(), segs.seg_slots, segs.max_seg_len)
    with pytest.raises(ValueError, match="int32"):
        backend.add_lora(y, torch.zeros(3, 64, device=DEVICE), prepared, bad)
    with pytest.raises(ValueError, match="dtype"):
        backend.add_lora(y.half(), torch.zeros(3, 64, device=DEVICE).half(), prepared, segs)


# ---- real sizes (Qwen2-VL-7B: hidden 3584, kv 512, MLP 18944), bf16, on a GPU ----

GPU_SLICES = {"q": [3584], "kv": [512], "up": [18944], "qkv": [3584, 512, 512]}


@pytest.mark.gpu
@pytest.mark.parametrize("slices", ["q", "kv", "up", "qkv"])
@pytest.mark.parametrize("num_tokens", [1, 8, 64])
@pytest.mark.parametrize("popularity", ["distinct", "uniform", "identical", "hot"])
@pytest.mark.parametrize("name", BASELINES)
def test_gpu_decode(name, popularity, num_tokens, slices):
    seed = num_tokens + POPULARITIES.index(popularity)
    segs, num_adapters = _segments([1] * num_tokens, popularity, seed, num_base=2)
    w = _weights(num_adapters + 2, 3584, GPU_SLICES[slices], torch.bfloat16, seed)
    _check(name, w, segs, 5, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("slices", ["q", "kv", "up", "qkv"])
@pytest.mark.parametrize("total", [1024, 4096])
@pytest.mark.parametrize("popularity", ["distinct", "zipf", "identical"])
@pytest.mark.parametrize("name", BASELINES)
def test_gpu_prefill(name, popularity, total, slices):
    seed = total + POPULARITIES.index(popularity)
    lens = [total // 4] * 4 if total == 1024 else [256, 512, 1280, 2048]
    segs, num_adapters = _segments(lens, popularity, seed, num_base=3)
    w = _weights(num_adapters + 4, 3584, GPU_SLICES[slices], torch.bfloat16, seed)
    _check(name, w, segs, 7, seed)
