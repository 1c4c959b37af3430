"""Where a merge switch's time goes: torch.profiler over one merge + unmerge of a dummy adapter
(q/k/v/o and all seven targets) on dummy 7B weights; prints GPU kernel time and wall time. First
the merge kernel's tiles, each timed by ``harness.gpu_time`` (eager: the launch copies its
pointer tables from host memory, which a CUDA graph cannot capture).

    python benchmarks/profile_merge.py
"""

from __future__ import annotations

import torch
from harness import gpu_time, merge_manager, register_subset, wall_time
from torch.profiler import ProfilerActivity, profile

from valora.adapters.merge_kernels import torch_merge_layers, triton_merge_layers


def sweep_tiles() -> None:
    """Seconds of one merge of a rank-64 gate|up slice over 28 layers per tile config."""
    from valora.adapters.merge_kernels import SliceMerge

    n, k, layers, rank = 18944, 3584, 28, 64
    dev, dt = "cuda", torch.bfloat16
    w = [torch.randn(n, k, device=dev, dtype=dt) for _ in range(layers)]
    out = [torch.empty_like(t) for t in w]
    a = torch.randn(layers, rank, k, device=dev, dtype=dt)
    b = torch.randn(layers, rank, n, device=dev, dtype=dt)
    job = SliceMerge(out, w, list(a), list(b), [1.0] * layers)
    floor = 2 * sum(t.nbytes for t in w) / 4.3e12
    for bn, bk, warps in [(64, 128, 4), (128, 128, 8), (64, 256, 8), (128, 64, 4), (32, 256, 4)]:
        seconds = gpu_time(
            lambda: triton_merge_layers(job, bn, bk, warps),  # noqa: B023
            reps=5,
            cuda_graph=False,
        )
        ms = seconds * 1e3
        print(f"tile {bn}x{bk} warps {warps}: {ms:.2f} ms (floor at 4.3 TB/s {floor * 1e3:.2f})")


def main() -> None:
    sweep_tiles()
    lora = merge_manager("qwen2-vl-7b", 64)  # the merger as a unit: no engine around it
    lora.add_dummy("all", 64, seed=7)
    register_subset(lora, "qkvo", "all", ("qkv_proj", "o_proj"))
    for strategy, name in [(s, n) for s in ("triton", "torch") for n in ("qkvo", "all")]:
        lora.merger.merge_layers = (
            triton_merge_layers if strategy == "triton" else torch_merge_layers
        )
        key = lora.resolve(name)
        lora.switch(key)
        lora.switch(None)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            (merge, unmerge), wall = wall_time(lambda: (lora.switch(key), lora.switch(None)))  # noqa: B023
        kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
        gpu = sum(e.device_time_total for e in kernels) / 1e3
        print(
            f"{strategy} {name}: merge {merge * 1e3:.2f} ms, unmerge {unmerge * 1e3:.2f} ms, "
            f"wall {wall * 1e3:.2f} ms, GPU kernels {gpu:.2f} ms"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


if __name__ == "__main__":
    main()
