"""W4A16 / W8A16 GEMM against bf16 cuBLAS on Qwen2-VL-7B's linear shapes, and end-to-end decode
W4A16 vs bf16, in one run (H100 / H200).

GEMM: for M in {1, 8, 16, 32, 64, 256, 1024} and every LM linear shape (qkv, o, gate|up, down),
the median time of y = x W^T (``harness.gpu_time``: CUDA-graph replays, L2 flushed; a graph
runs the call on several copies of the weights, ``_copies``) for bf16 cuBLAS, the quantized
GEMM as the engine runs it (the strategy and tiles of the tuned table,
``python -m valora.quant.tuner``) and dequantize + cuBLAS alone, each next to its floor:
max(bytes / copy bandwidth, FLOPs / bf16 peak), both measured in the same run. Decode: tok/s
at batch 1 and 32 (prompt 256, output 128).

    python benchmarks/bench_quant.py --out benchmarks/results/quant_h100.json
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
from harness import copy_bandwidth, gpu_time, matmul_peak, provenance, run_engine

from valora.llm import LLM
from valora.quant.config_table import get_config, table_path
from valora.quant.reference import quantize_rtn
from valora.quant.triton_gemm import dequantize_kn, quant_matmul
from valora.quant.types import QuantizedWeight

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
MS = (1, 8, 16, 32, 64, 256, 1024)


def _copies(wq: QuantizedWeight) -> int:
    """Calls per timed graph, each on its own copy of the weights: together they exceed the L2
    many times over (every call reads its weight from HBM, as in a decode step), and the graph's
    launch latency is spread over them (in the engine's decode graph kernels run back to back)."""
    qbytes = sum(t.numel() * t.element_size() for t in (wq.qweight, wq.scales, wq.zeros))
    return max(1, min(16, -(-200_000_000 // qbytes)))


def _weight_copies(
    w16: torch.Tensor, bits: int
) -> tuple[QuantizedWeight, list[torch.Tensor], list[QuantizedWeight]]:
    """The quantized weight and ``_copies`` copies of both the bf16 and the quantized weight."""
    wq = quantize_rtn(w16.float(), bits, 128, sym=False).to("cuda")
    copies = _copies(wq)
    w16s = [w16.clone() for _ in range(copies)]
    wqs = [
        QuantizedWeight(*(t.clone() for t in (wq.qweight, wq.scales, wq.zeros)), None, bits, 128)
        for _ in range(copies)
    ]
    return wq, w16s, wqs


def _time_gemms(
    x: torch.Tensor, w16s: list[torch.Tensor], wqs: list[QuantizedWeight]
) -> dict[str, float]:
    """Seconds per call of each GEMM on x, over the weight copies."""
    calls = {
        "bf16_cublas": lambda: [x @ w.t() for w in w16s],
        "quant": lambda: [quant_matmul(x, w) for w in wqs],  # tuned
        "dequant_cublas": lambda: [x @ dequantize_kn(w, torch.bfloat16) for w in wqs],
    }
    return {key: gpu_time(call, reps=20) / len(wqs) for key, call in calls.items()}


def _floors(
    m: int, n: int, k: int, bits: int, wq: QuantizedWeight, bandwidth: float, peak: float
) -> dict[str, float]:
    """max(bytes / bandwidth, FLOPs / peak) in seconds, for bf16 and the quantized weight."""
    flops = 2 * m * n * k
    qbytes = n * k * bits / 8 + wq.scales.numel() * 2 + wq.zeros.numel() * 4
    io = 2 * m * (k + n)
    return {
        "bf16": max((2 * n * k + io) / bandwidth, flops / peak),
        "quant": max((qbytes + io) / bandwidth, flops / peak),
    }


def _gemm_row(
    name: str, x: torch.Tensor, n: int, bits: int, copies: int, times: dict, floors: dict
) -> dict:
    """The result row of x [M, K] times the (N, K) weight of shape ``name``."""
    m, k = x.shape
    best = times["quant"]
    config = get_config(m, n, k, bits, x.dtype, x.device)
    return {
        "shape": name,
        "N": n,
        "K": k,
        "M": m,
        "bits": bits,
        "config": config,
        "weight_copies": copies,
        **{f"{key}_us": v * 1e6 for key, v in times.items()},
        "bf16_floor_us": floors["bf16"] * 1e6,
        "quant_floor_us": floors["quant"] * 1e6,
        "speedup_vs_bf16": times["bf16_cublas"] / best,
        "quant_x_floor": best / floors["quant"],
    }


def gemm_rows(bits: int, bandwidth: float, peak: float) -> list[dict]:
    rows = []
    for name, (n, k) in SHAPES.items():
        w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        wq, w16s, wqs = _weight_copies(w16, bits)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            times = _time_gemms(x, w16s, wqs)
            floors = _floors(m, n, k, bits, wq, bandwidth, peak)
            row = _gemm_row(name, x, n, bits, len(wqs), times, floors)
            print(
                json.dumps(
                    {key: round(v, 2) if isinstance(v, float) else v for key, v in row.items()}
                ),
                flush=True,
            )
            rows.append(row)
        torch.cuda.empty_cache()
    return rows


def decode_rows(setting: str) -> list[dict]:
    rows = []
    for quantization in ("none", "w4a16"):
        llm = LLM(
            setting,
            device="cuda",
            dtype="bfloat16",
            num_token=32 * 400 + 4096,
            max_num_seqs=32,
            quantization=quantization,
        )
        for batch in (1, 32):
            result = run_engine(llm, batch, 256, 128)
            rows.append({"quantization": quantization, "batch": batch, **result})
            print(json.dumps(rows[-1]), flush=True)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-setting", default="qwen2-vl-7b")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", default="benchmarks/results/quant.json")
    args = parser.parse_args()
    bandwidth, peak = copy_bandwidth(), matmul_peak(torch.bfloat16)
    record = {
        "benchmark": "quant_gemm",
        **provenance(),
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "bf16_peak_TFLOPs": peak / 1e12,
    }
    table = table_path(record["gpu"], torch.bfloat16)
    record["tuned_table"] = str(table.relative_to(table.parents[2])) if table.exists() else None
    record["gemm"] = [row for bits in args.bits for row in gemm_rows(bits, bandwidth, peak)]
    record["decode"] = decode_rows(args.model_setting)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
