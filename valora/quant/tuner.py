"""Offline tuning of the quantized GEMM: ``python -m valora.quant.tuner``.

For every LM linear shape of the chosen model settings, every bits and every M bucket
(``valora.quant.config_table``) it times each candidate (gemv / dot tiles, and dequantize +
cuBLAS) on the current GPU (``kernel_tables.timing.gpu_time``: CUDA-graph replays with the L2
flushed, median), checks each candidate's output against dequantize + matmul (a wrong one is
dropped), keeps the fastest and writes ``valora/quant/configs/<gpu>__<dtype>.json``. Entries
already in the table are kept unless ``--retune``; ``--budget-s`` stops early and saves what was
measured.

    python -m valora.quant.tuner --models qwen2-vl-7b --bits 4 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import triton

from kernel_tables import read_table, write_table
from kernel_tables.timing import gpu_time
from valora.quant.config_table import M_BUCKETS, bucket_key, table_path
from valora.quant.reference import quantize_rtn
from valora.quant.triton_gemm import dequantize_kn, quant_matmul

MODEL_SHAPES = {  # (N, K) of qkv, o, gate|up, down
    "qwen2-vl-7b": [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)],
    "qwen2-vl-2b": [(2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960)],
}
SPLITS = (1, 2, 4, 8, 16)


def candidates(m: int) -> list[dict]:
    """BLOCK_K 128 keeps a tile inside one group of 128 (one scale row per tile); planes need
    BLOCK_K // pack >= 16 (the dot depth)."""
    if m == 1:
        return _gemv_candidates()
    if m <= 64:
        return _small_batch_dot_candidates(m)
    return _large_batch_candidates()


def _gemv_candidates() -> list[dict]:
    """One row: gemv tiles (BLOCK_N, BLOCK_K, warps) x split-K x stages."""
    tiles = [(64, 128, 4), (128, 128, 4), (256, 128, 8), (128, 128, 8), (64, 256, 4)]
    return [
        {
            "kernel": "gemv",
            "BLOCK_N": bn,
            "BLOCK_K": bk,
            "SPLIT_K": sk,
            "UNPACK": "planes",
            "num_warps": w,
            "num_stages": st,
        }
        for (bn, bk, w), sk, st in itertools.product(tiles, SPLITS, (3, 4))
    ]


def _small_batch_dot_candidates(m: int) -> list[dict]:
    """2..64 rows: one BLOCK_M covering the rows, dot tiles x split-K."""
    bm = max(16, min(64, m))
    tiles = [
        ("planes", 64, 128),
        ("planes", 128, 128),
        ("reshape", 64, 128),
        ("reshape", 128, 64),
    ]
    return [
        {
            "kernel": "dot",
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "BLOCK_K": bk,
            "SPLIT_K": sk,
            "UNPACK": un,
            "num_warps": 4,
            "num_stages": 3,
        }
        for (un, bn, bk), sk in itertools.product(tiles, SPLITS)
    ]


def _large_batch_candidates() -> list[dict]:
    """Over 64 rows: dequantize + cuBLAS, or dot tiles without split-K."""
    tiles = [
        ("planes", 128, 128, 128, 8),
        ("planes", 128, 256, 128, 8),
        ("planes", 256, 128, 128, 8),
        ("planes", 64, 128, 128, 4),
        ("reshape", 128, 128, 64, 8),
    ]
    return [{"kernel": "dequant"}] + [
        {
            "kernel": "dot",
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "BLOCK_K": bk,
            "SPLIT_K": 1,
            "UNPACK": un,
            "num_warps": w,
            "num_stages": 3,
        }
        for un, bm, bn, bk, w in tiles
    ]


_REPS = 15  # timed replays per candidate (median)


def tune_bucket(n: int, k: int, bits: int, m: int, dtype: torch.dtype) -> tuple[dict, float]:
    """The fastest correct candidate for M = m rows (RTN weights, group size 128)."""
    w = quantize_rtn(torch.randn(n, k, device="cuda") / k**0.5, bits, 128, sym=False)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    want = (x @ dequantize_kn(w, dtype)).float()
    best, best_us = None, float("inf")
    for config in candidates(m):
        try:
            got = quant_matmul(x, w, config).float()
            if (got - want).abs().max() > 2e-2 * want.abs().max():
                print(f"  dropped (wrong output): {config}", flush=True)
                continue
            us = 1e6 * gpu_time(lambda: quant_matmul(x, w, config), reps=_REPS)  # noqa: B023
        except (triton.runtime.errors.OutOfResources, RuntimeError) as e:
            print(f"  skipped {config}: {type(e).__name__}", flush=True)
            torch.cuda.synchronize()
            continue
        if us < best_us:
            best, best_us = config, us
    return best, best_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen2-vl-7b"])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--m-buckets", type=int, nargs="+", default=list(M_BUCKETS))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--budget-s", type=float, default=float("inf"))
    parser.add_argument("--retune", action="store_true")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    gpu = torch.cuda.get_device_name()
    path = table_path(gpu, dtype)
    table = read_table(path)
    deadline = time.monotonic() + args.budget_s
    jobs = itertools.product(
        args.bits, {s for m in args.models for s in MODEL_SHAPES[m]}, args.m_buckets
    )
    for bits, (n, k), m in sorted(jobs):
        key = bucket_key(bits, n, k, m)
        if key in table and not args.retune:
            continue
        if time.monotonic() > deadline:
            print("budget reached; run again to continue", flush=True)
            break
        config, us = tune_bucket(n, k, bits, m, dtype)
        if config is not None:
            table[key] = config | {"us": round(us, 2)}
            print(f"{key}: {config} {us:.1f} us", flush=True)
    write_table(path, gpu, args.dtype, table)
    print(f"wrote {len(table)} buckets to {path}")


if __name__ == "__main__":
    main()
