"""Ahead-of-serving compilation of the ATMM configs (``atmm.ops.precompile``): the buckets it
walks are exactly those a batch can reach, it leaves the weights alone, and on the GPU the calls
that follow compile nothing new."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from atmm.ops.precompile import distinct_configs, precompile, reachable_buckets  # noqa: E402
from atmm.workloads import make_weights  # noqa: E402
from kernel_tables import pow2_ceil  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("max_tokens,max_segments", [(3, 2), (8, 4), (9, 3), (16, 16), (5, 1)])
def test_reachable_buckets_are_those_of_some_batch(max_tokens, max_segments):
    # a batch of p segments whose longest has L rows exists iff L + (p - 1) rows fit
    seen = {
        (pow2_ceil(longest), pow2_ceil(parts))
        for parts in range(1, max_segments + 1)
        for longest in range(1, max_tokens + 1)
        if longest + parts - 1 <= max_tokens
    }
    assert set(reachable_buckets(max_tokens, max_segments)) == seen


def test_precompile_launches_each_distinct_config_and_leaves_the_weights():
    device = torch.device(DEVICE)  # CPU: the interpreter, whose default configs are few
    w = make_weights([16, 8, 0], 64, [32, 16], torch.float32, device, max_rank=16)
    before = [t.clone() for t in (w.a, w.b, w.ranks, w.scalings)]
    configs = distinct_configs(w, 256, 8, torch.float32, device)
    assert configs["shrink"] and configs["expand"]
    assert len({str(sorted(c.items())) for c in configs["shrink"]}) == len(configs["shrink"])
    count = precompile(w, 256, 8, torch.float32)
    assert count == len(configs["shrink"]) + len(configs["expand"])
    for old, new in zip(before, (w.a, w.b, w.ranks, w.scalings)):
        assert torch.equal(old, new)


@pytest.mark.gpu
def test_after_precompile_serving_calls_compile_nothing():
    from atmm.ops import expand, shrink
    from atmm.ops.lora import lora_expand, lora_shrink
    from atmm.types import LoRASegments

    device = torch.device("cuda")
    w = make_weights([64, 32, 16, 8], 3584, [3584, 512, 512], torch.bfloat16, device)
    precompile(w, 1024, 16, torch.bfloat16)
    kernels = (
        shrink._shrink_tile_kernel,
        shrink._shrink_gemv_kernel,
        expand._expand_tile_kernel,
        expand._expand_gemv_kernel,
    )
    index = torch.cuda.current_device()

    def compiled() -> int:
        return sum(len(k.device_caches[index][0]) for k in kernels)

    count = compiled()
    for lens in ([1] * 16, [1, 1, 1], [3, 5], [17], [200, 1, 7], [1000], [60] * 16, [512, 512]):
        segs = LoRASegments.build(list(lens), [i % 4 for i in range(len(lens))], device)
        x = torch.randn(sum(lens), 3584, dtype=torch.bfloat16, device=device)
        y = torch.zeros(sum(lens), 4608, dtype=torch.bfloat16, device=device)
        lora_expand(lora_shrink(x, w, segs), y, w, segs)
    torch.cuda.synchronize()
    assert compiled() == count
