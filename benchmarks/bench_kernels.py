"""LoRA op cost (one add_lora call: shrink + expand) of ATMM and the baselines vs the number of
tokens, next to its floor; one JSONL line per (target, phase, tokens, backend).

Qwen2-VL-7B dimensions: K = 3584, N in {3584, 512, 18944}; mixed ranks {8, 16, 32, 64, 128}
(max_rank 128). Decode: 1-64 tokens, one token per request, every request its own adapter.
Prefill: 256-8192 tokens as requests of 256 tokens (an image's worth), each its own adapter.
Each time is the median of ``--reps`` runs with the L2 cache flushed before each, replayed from
a CUDA graph when the backend can be captured (GPU time, as in the engine's decode graphs), else
run eagerly (the row says which): ``harness.gpu_time``. Floor: the
larger of bytes / copy bandwidth (x read, y read and written, each used adapter's A and B read
once) and FLOPs / bf16 matmul peak, both measured in the same run.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_h100.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch
from harness import LORA_K, copy_bandwidth, gpu_time, lora_workload, matmul_peak, provenance

from atmm.backends import BACKEND_NAMES, get_backend

DECODE_TOKENS = (1, 2, 4, 8, 16, 32, 64)
PREFILL_TOKENS = (256, 512, 1024, 2048, 4096, 8192)
K = LORA_K
TARGETS = {"q/o": 3584, "k/v": 512, "gate/up": 18944}


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
                    for row in _measure(
                        backends, target, n, phase, num_tokens, dtype, args.reps, bandwidth, peak
                    ):
                        print(json.dumps(row), flush=True)
                        f.write(json.dumps(row) + "\n")


def _measure(backends, target, n, phase, num_tokens, dtype, reps, bandwidth, peak):
    w, segs, x, y, ranks = lora_workload(phase, num_tokens, n, dtype, seed=num_tokens)
    floor = floor_s(num_tokens, n, ranks, x.element_size(), bandwidth, peak)
    for name, backend in backends.items():
        prepared = backend.prepare(w)
        call = lambda: backend.add_lora(y, x, prepared, segs)  # noqa: B023, E731
        graph = getattr(backend, "graph_safe", False)  # else it syncs with the host
        seconds = gpu_time(call, reps=reps, cuda_graph=graph)
        yield {
            "target": target,
            "N": n,
            "K": K,
            "phase": phase,
            "tokens": num_tokens,
            "num_adapters": len(ranks),
            "backend": name,
            "ms": seconds * 1e3,
            "timing": "cuda_graph" if graph else "eager",
            "floor_ms": floor * 1e3,
            "x_floor": seconds / floor,
        }


def _header(args, bandwidth: float, peak: float) -> dict:
    return {
        "benchmark": "lora_op_cost",
        **provenance(),
        "dtype": args.dtype,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "matmul_peak_TFLOPs": peak / 1e12,
        "ranks": "mixed {8,16,32,64,128}, max_rank 128",
    }


if __name__ == "__main__":
    main()
