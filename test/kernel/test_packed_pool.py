"""Every LoRA backend on a *packed* pool (the engine's layout: the slot dimension strides one
rank row, slot o = rows o .. o + r of a shared buffer), against ``atmm.ref.add_lora_ref``.

Adapters of ranks 8..64 sit back to back, so the rows past one adapter's rank are the next
adapter's (finite, non-zero): a kernel that reads past a slot's rank gets a wrong answer. Free
rows between adapters hold NaN. Outputs start random; rows of slot -1 must come back unchanged.
CPU: the Triton interpreter, fp32/fp16, small sizes; GPU: bf16 at Qwen2-VL-7B sizes.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from atmm.backends import BACKEND_NAMES, get_backend  # noqa: E402
from atmm.ref import add_lora_ref  # noqa: E402
from atmm.types import LoRASegments, LoRAWeights  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}


def packed_pool(
    ranks: list[int], k: int, slices: list[int], max_rank: int, dtype, device, seed: int
) -> tuple[LoRAWeights, list[int]]:
    """Adapters packed back to back with a 3-row NaN gap after every second one -> (weights,
    each adapter's slot)."""
    gen = torch.Generator().manual_seed(seed)
    slots, row = [], 0
    for i, r in enumerate(ranks):
        slots.append(row)
        row += r + (3 if i % 2 else 0)
    capacity, n = row, sum(slices)
    a_buf = torch.full((len(slices), capacity + max_rank, k), float("nan"), dtype=dtype)
    b_buf = torch.full((capacity + max_rank, n), float("nan"), dtype=dtype)
    ranks_t = torch.zeros(capacity, dtype=torch.int32)
    scalings = torch.zeros(capacity)
    for slot, r in zip(slots, ranks):
        a_buf[:, slot : slot + r] = (torch.randn(len(slices), r, k, generator=gen) / k**0.5).to(
            dtype
        )
        b_buf[slot : slot + r] = (torch.randn(r, n, generator=gen) / r**0.5).to(dtype)
        ranks_t[slot], scalings[slot] = r, 0.5 + slot % 3
    a_buf, b_buf = a_buf.to(device), b_buf.to(device)
    a = a_buf.as_strided((capacity, len(slices), max_rank, k), (k, a_buf.stride(0), k, 1))
    b = b_buf.as_strided((capacity, max_rank, n), (n, n, 1))
    offsets = [0]
    for s in slices:
        offsets.append(offsets[-1] + s)
    weights = LoRAWeights(a, b, ranks_t.to(device), scalings.to(device), tuple(offsets))
    return weights, slots


def run_case(
    backend: str, dtype, device, k: int, slices: list[int], seg_lens: list[int], seed: int
) -> None:
    ranks = [8, 64, 16, 32, 8, 64]
    w, slots = packed_pool(ranks, k, slices, 64, dtype, device, seed)
    seg_slots = [slots[i % len(slots)] if i % 4 != 3 else -1 for i in range(len(seg_lens))]
    segs = LoRASegments.build(seg_lens, seg_slots, device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(sum(seg_lens), k, generator=gen).to(device, dtype)
    y0 = torch.randn(sum(seg_lens), sum(slices), generator=gen).to(device, dtype)
    want = add_lora_ref(y0.clone(), x, w, segs).float()
    impl = get_backend(backend)
    got = y0.clone()
    impl.add_lora(got, x, impl.prepare(w), segs)
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err < TOL[dtype], f"{backend}: relative error {err:.2e}"
    base_rows = torch.cat([torch.full((n,), s < 0) for n, s in zip(seg_lens, seg_slots)])
    assert torch.equal(got[base_rows.to(device)], y0[base_rows.to(device)])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seg_lens", [[1] * 8, [5, 17, 3, 9, 1, 12]], ids=["decode", "prefill"])
def test_packed_pool_cpu(backend, dtype, seg_lens):
    if torch.cuda.is_available():
        pytest.skip("the GPU variant covers it")
    run_case(backend, dtype, "cpu", 48, [32, 16, 16], seg_lens, seed=len(seg_lens))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b != "torch"])
@pytest.mark.parametrize("slices", [[3584, 512, 512], [18944, 18944], [3584]], ids=str)
@pytest.mark.parametrize(
    "seg_lens", [[1] * 32, [256, 1, 300, 7, 256, 64]], ids=["decode", "prefill"]
)
def test_packed_pool_gpu_bf16(backend, slices, seg_lens):
    run_case(backend, torch.bfloat16, "cuda", 3584, slices, seg_lens, seed=3)
