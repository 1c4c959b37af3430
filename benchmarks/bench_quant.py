"""W4A16 / W8A16 GEMM against bf16 cuBLAS on Qwen2-VL-7B's linear shapes, and end-to-end decode
W4A16 vs bf16, in one run (H100 / H200).

GEMM: for M in {1, 8, 16, 32, 64, 256, 1024} and every LM linear shape (qkv, o, gate|up, down),
the median time of y = x W^T (CUDA-graph replays, L2 flushed) for bf16 cuBLAS, the Triton
kernel, and dequantize + cuBLAS, each next to its floor: max(bytes / copy bandwidth, FLOPs / bf16
peak), both measured in the same run. Decode: tok/s at batch 1 and 32 (prompt 256, output 128).

    python benchmarks/bench_quant.py --out benchmarks/results/quant_h100.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

import torch
from bench_engine import _versions, run_engine
from bench_kernels import _capture, _median_s, copy_bandwidth, matmul_peak

from valora.llm import LLM
from valora.quant.reference import quantize_rtn
from valora.quant.triton_gemm import dequantize_kn, quant_matmul

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
MS = (1, 8, 16, 32, 64, 256, 1024)
# (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages) tried at decode sizes
SWEEP = [(64, 128, 1, 4, 3), (128, 128, 1, 4, 3), (32, 128, 1, 4, 4), (64, 256, 1, 4, 2),
         (64, 128, 2, 4, 3), (128, 128, 2, 8, 3), (32, 256, 4, 4, 3),
         (64, 128, 4, 4, 4)]  # fmt: skip


def gemm_rows(bits: int, bandwidth: float, peak: float) -> list[dict]:
    rows = []
    for name, (n, k) in SHAPES.items():
        w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        wq = quantize_rtn(w16.float(), bits, 128, sym=False).to("cuda")
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            calls = {  # each captured and timed before the next iteration rebinds x
                "bf16_cublas": lambda: x @ w16.t(),  # noqa: B023
                "triton": lambda: quant_matmul(x, wq),  # noqa: B023
                "dequant_cublas": lambda: x @ dequantize_kn(wq, torch.bfloat16),  # noqa: B023
            }
            times = {key: _median_s(_capture(call).replay, 20) for key, call in calls.items()}
            flops = 2 * m * n * k
            qbytes = n * k * bits / 8 + wq.scales.numel() * 2 + wq.zeros.numel() * 4
            io = 2 * m * (k + n)
            floors = {"bf16": max((2 * n * k + io) / bandwidth, flops / peak),
                      "quant": max((qbytes + io) / bandwidth, flops / peak)}  # fmt: skip
            best = min(times["triton"], times["dequant_cublas"])
            row = {"shape": name, "N": n, "K": k, "M": m, "bits": bits,
                   **{f"{key}_us": v * 1e6 for key, v in times.items()},
                   "bf16_floor_us": floors["bf16"] * 1e6, "quant_floor_us": floors["quant"] * 1e6,
                   "speedup_vs_bf16": times["bf16_cublas"] / best,
                   "quant_x_floor": best / floors["quant"]}  # fmt: skip
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)  # fmt: skip
            rows.append(row)
        torch.cuda.empty_cache()
    return rows


def sweep_small_m(bits: int) -> list[dict]:
    """Tile configs of the Triton kernel at decode sizes (the defaults' evidence)."""
    rows = []
    for name in ("gate_up", "down"):
        n, k = SHAPES[name]
        wq = quantize_rtn(torch.randn(n, k, device="cuda") / k**0.5, bits, 128, False).to("cuda")
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for bn, bk, split, warps, stages in SWEEP:
                cfg = {"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split,
                       "num_warps": warps, "num_stages": stages}  # fmt: skip
                t = _median_s(_capture(lambda: quant_matmul(x, wq, cfg)).replay, 20)  # noqa: B023
                rows.append({"shape": name, "M": m, "bits": bits, **cfg, "us": t * 1e6})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def decode_rows(setting: str) -> list[dict]:
    rows = []
    for quantization in ("none", "w4a16"):
        llm = LLM(setting, device="cuda", dtype="bfloat16", num_token=32 * 400 + 4096,
                  max_num_seqs=32, quantization=quantization)  # fmt: skip
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
    record = {"benchmark": "quant_gemm", "gpu": torch.cuda.get_device_name(),
              "versions": _versions(), "command": " ".join([sys.executable, *sys.argv]),
              "copy_bandwidth_GBps": bandwidth / 1e9, "bf16_peak_TFLOPs": peak / 1e12}  # fmt: skip
    record["sweep"] = [row for bits in args.bits for row in sweep_small_m(bits)]
    record["gemm"] = [row for bits in args.bits for row in gemm_rows(bits, bandwidth, peak)]
    record["decode"] = decode_rows(args.model_setting)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
