"""LoRA op cost (one add_lora call: shrink + expand) of ATMM and the baselines vs the number of
tokens, next to its floor; one JSONL line per (target, phase, tokens, backend).

Qwen2-VL-7B dimensions: K = 3584, N in {3584, 512, 18944}; mixed ranks {8, 16, 32, 64, 128}
(max_rank 128). Decode: 1-64 tokens, one token per request, every request its own adapter.
Prefill: 256-8192 tokens as requests of 256 tokens (an image's worth), each its own adapter.
Each time is the median of ``--reps`` runs with the L2 cache flushed before each, replayed from
a CUDA graph when the backend can be captured (GPU time, as in the engine's decode graphs), else
run eagerly (the row says which). Floor: the
larger of bytes / copy bandwidth (x read, y read and written, each used adapter's A and B read
once) and FLOPs / bf16 matmul peak, both measured in the same run.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_h100.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import torch

from atmm.backends import BACKEND_NAMES, get_backend
from atmm.types import LoRASegments
from atmm.workloads import make_weights, mixed_ranks

DECODE_TOKENS = (1, 2, 4, 8, 16, 32, 64)
PREFILL_TOKENS = (256, 512, 1024, 2048, 4096, 8192)
PREFILL_REQUEST_LEN = 256
K = 3584
TARGETS = {"q/o": 3584, "k/v": 512, "gate/up": 18944}


def copy_bandwidth() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / _median_s(lambda: dst.copy_(src), reps=10, flush=False)


def matmul_peak(dtype: torch.dtype) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    return 2 * 8192**3 / _median_s(lambda: a @ a, reps=10, flush=False)


_FLUSH = None


def _median_s(fn, reps: int, flush: bool = True) -> float:
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # > the L2 cache
    fn()
    times = []
    for _ in range(reps):
        if flush:
            _FLUSH.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def workload(phase: str, num_tokens: int, n: int, dtype: torch.dtype, seed: int):
    """(weights, segments, x, y, ranks of the used adapters)."""
    if phase == "decode":
        lens = [1] * num_tokens
    else:
        lens = [PREFILL_REQUEST_LEN] * (num_tokens // PREFILL_REQUEST_LEN)
    ranks = mixed_ranks(len(lens), seed)
    w = make_weights(ranks, K, [n], dtype, "cuda", seed, max_rank=128)
    segs = LoRASegments.build(lens, list(range(len(lens))), "cuda")
    x = torch.randn(num_tokens, K, device="cuda", dtype=dtype)
    y = torch.randn(num_tokens, n, device="cuda", dtype=dtype)
    return w, segs, x, y, ranks


def floor_s(num_tokens, n, ranks, itemsize, bandwidth, peak) -> float:
    bytes_moved = itemsize * (num_tokens * K + 2 * num_tokens * n + sum(ranks) * (K + n))
    flops = 2 * sum(ranks) * (K + n) * (num_tokens // max(1, len(ranks)))
    return max(bytes_moved / bandwidth, flops / peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kernels.jsonl")
    parser.add_argument("--backends", nargs="+", default=list(BACKEND_NAMES))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    bandwidth, peak = copy_bandwidth(), matmul_peak(dtype)
    backends = {name: get_backend(name) for name in args.backends}
    with open(args.out, "w") as f:
        f.write(json.dumps(_header(args, bandwidth, peak)) + "\n")
        for target, n in TARGETS.items():
            for phase, sizes in (("decode", DECODE_TOKENS), ("prefill", PREFILL_TOKENS)):
                for num_tokens in sizes:
                    for row in _measure(backends, target, n, phase, num_tokens, dtype, args.reps,
                                        bandwidth, peak):  # fmt: skip
                        print(json.dumps(row), flush=True)
                        f.write(json.dumps(row) + "\n")


def _measure(backends, target, n, phase, num_tokens, dtype, reps, bandwidth, peak):
    w, segs, x, y, ranks = workload(phase, num_tokens, n, dtype, seed=num_tokens)
    floor = floor_s(num_tokens, n, ranks, x.element_size(), bandwidth, peak)
    for name, backend in backends.items():
        prepared = backend.prepare(w)
        call = lambda: backend.add_lora(y, x, prepared, segs)  # noqa: B023, E731
        graph = _capture(call) if getattr(backend, "graph_safe", False) else None
        seconds = _median_s(graph.replay if graph else call, reps)
        yield {"target": target, "N": n, "K": K, "phase": phase, "tokens": num_tokens,
               "num_adapters": len(ranks), "backend": name, "ms": seconds * 1e3,
               "timing": "cuda_graph" if graph else "eager", "floor_ms": floor * 1e3,
               "x_floor": seconds / floor}  # fmt: skip


def _capture(call) -> torch.cuda.CUDAGraph:
    """The call as a CUDA graph: GPU time without host launch overhead, as the engine's decode
    graphs run it (backends that sync with the host say ``graph_safe = False``)."""
    call()  # compile / warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph


def _header(args, bandwidth: float, peak: float) -> dict:
    import triton

    return {
        "benchmark": "lora_op_cost",
        "gpu": torch.cuda.get_device_name(),
        "versions": {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "command": " ".join([sys.executable, *sys.argv]),
        "dtype": args.dtype,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "matmul_peak_TFLOPs": peak / 1e12,
        "ranks": "mixed {8,16,32,64,128}, max_rank 128",
    }


if __name__ == "__main__":
    main()
