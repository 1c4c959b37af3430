"""Offline profiler for adaptive tiling: ``python -m atmm.tuner``.

For every shape bucket (``atmm.config_table.bucket_key``) of the chosen model dimensions it times
the candidate configs of the shrink and of the expand on the current GPU and keeps the fastest;
the fused kernel is kept for a bucket only where its best time beats the tuned pair's; then
writes the table ``atmm/configs/<gpu>__<dtype>.json`` that ``atmm.config_table`` loads at run
time. Times: ``kernel_tables.timing.gpu_time`` (CUDA-graph replays, L2 flushed, median).
Entries already in the table are kept unless ``--retune``; ``--budget-s`` stops early and saves
what was measured, so a long tuning can run in several sittings.

    python -m atmm.tuner --models qwen2-vl-7b qwen2-vl-2b --ranks 64 128 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import triton

from atmm.config_table import bucket_key, table_path
from atmm.ops.expand import launch_expand
from atmm.ops.fused import launch_fused
from atmm.ops.shrink import launch_shrink
from atmm.types import LoRASegments
from atmm.workloads import make_weights
from kernel_tables import read_table, write_table
from kernel_tables.timing import gpu_time

# (K, output slices) of each LoRA target; the 7B list adds the op-cost benchmark's targets.
# The vision tower (same in both sizes): qkv, proj, fc1, fc2 per block, then the merger's two
# linears (the second ends at the language model's hidden size).
_VISION = [(1280, [3840]), (1280, [1280]), (1280, [5120]), (5120, [1280]), (5120, [5120])]
MODEL_TARGETS = {
    "qwen2-vl-7b": [
        (3584, [3584, 512, 512]),
        (3584, [3584]),
        (3584, [18944, 18944]),
        (18944, [3584]),
        (3584, [512]),
        (3584, [18944]),
        *_VISION,
        (5120, [3584]),
    ],
    "qwen2-vl-2b": [
        (1536, [1536, 256, 256]),
        (1536, [1536]),
        (1536, [8960, 8960]),
        (8960, [1536]),
        *_VISION,
        (5120, [1536]),
    ],
}
# (max_seg_len, num_segments): decode-like many short segments, prefill-like few long ones
BUCKETS = [(m, s) for m in (1, 2, 4, 8) for s in (1, 2, 4, 8, 16, 32, 64, 128, 256)] + [
    (m, s)
    for m in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    for s in (1, 2, 4, 8, 16, 32, 64)
    if m * s <= 16384
]


def shrink_candidates(max_seg_len: int, max_rank: int) -> list[dict]:
    rank_blocks = sorted({max(16, min(64, max_rank)), max(16, min(128, max_rank))})
    out = []
    if max_seg_len <= 8:
        for block_k, split_k in itertools.product((64, 128, 256), (1, 2, 4, 8, 16, 32)):
            out.append(
                {
                    "path": "gemv",
                    "BLOCK_K": block_k,
                    "BLOCK_R": rank_blocks[0],
                    "SPLIT_K": split_k,
                    "num_warps": 4,
                    "num_stages": 2,
                }
            )
        for bk, sk in itertools.product((64, 128), (1, 4, 16)):
            out.append(
                {
                    "path": "tile",
                    "BLOCK_M": 16,
                    "BLOCK_K": bk,
                    "BLOCK_R": rank_blocks[0],
                    "SPLIT_K": sk,
                    "num_warps": 4,
                    "num_stages": 3,
                }
            )
        return out
    block_ms = [bm for bm in (16, 32, 64, 128) if bm <= max(16, max_seg_len)][-3:]
    for bm, bk, br, sk in itertools.product(block_ms, (64, 128), rank_blocks, (1, 2, 4)):
        out.append(
            {
                "path": "tile",
                "BLOCK_M": bm,
                "BLOCK_K": bk,
                "BLOCK_R": br,
                "SPLIT_K": sk,
                "num_warps": 4,
                "num_stages": 3,
            }
        )
    return out


def expand_candidates(max_seg_len: int, max_rank: int) -> list[dict]:
    out = []
    if max_seg_len <= 8:
        for bn, bk in itertools.product((64, 128, 256), (16, 32, 64)):
            out.append(
                {"path": "gemv", "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 2}
            )
        for bn, bk in itertools.product((64, 128, 256), (16, 64)):
            out.append(
                {
                    "path": "tile",
                    "BLOCK_M": 16,
                    "BLOCK_N": bn,
                    "BLOCK_K": bk,
                    "num_warps": 4,
                    "num_stages": 2,
                }
            )
        return out
    # large M tiles cut the re-reads of B (one per M tile), large N tiles those of v
    block_ms = [bm for bm in (16, 32, 64, 128, 256) if bm <= max(16, max_seg_len)][-3:]
    for bm, bn, bk, n_tiles, warps in itertools.product(
        block_ms, (64, 128, 256), (16, 32), (1, 4), (4, 8)
    ):
        out.append(
            {
                "path": "tile",
                "BLOCK_M": bm,
                "BLOCK_N": bn,
                "BLOCK_K": bk,
                "N_TILES": n_tiles,
                "num_warps": warps,
                "num_stages": 2,
            }
        )
    return out


def fused_candidates(max_seg_len: int) -> list[dict]:
    block_ms = [bm for bm in (16, 32, 64) if bm <= max(16, max_seg_len)][-2:]
    return [
        {
            "path": "fused",
            "BLOCK_M": bm,
            "BLOCK_K": bk,
            "BLOCK_N": bn,
            "N_TILES": nt,
            "num_warps": 4 if bm < 64 else 8,
            "num_stages": 2,
        }
        for bm, bk, bn, nt in itertools.product(block_ms, (64, 128), (64, 128), (1, 4, 16))
    ]


_REPS = 10  # timed replays per candidate (median)


def bucket_runner(op, k, slices, max_rank, max_seg_len, num_segments, dtype):
    """(candidates, run(config)) for one bucket: every segment full, every slot its own
    rank-max_rank adapter (the slowest case of the bucket)."""
    w = make_weights([max_rank] * min(num_segments, 64), k, slices, dtype, "cuda")
    slots = [i % w.num_slots for i in range(num_segments)]
    segs = LoRASegments.build([max_seg_len] * num_segments, slots, "cuda")
    num_tokens = max_seg_len * num_segments
    x = torch.randn(num_tokens, k, device="cuda", dtype=dtype)
    y = torch.zeros(num_tokens, sum(slices), device="cuda", dtype=dtype)
    v = torch.zeros(num_tokens, len(slices), max_rank, device="cuda")
    if op == "shrink":
        return shrink_candidates(max_seg_len, max_rank), lambda c: launch_shrink(
            x, w.a, v, segs, w.ranks, c
        )
    if op == "fused":
        return fused_candidates(max_seg_len), lambda c: launch_fused(x, w, y, segs, c)
    return expand_candidates(max_seg_len, max_rank), lambda c: launch_expand(
        v, w.b, y, segs, w.ranks, w.scalings, w.slice_offsets, c
    )


def time_config(run, config) -> float:
    """Milliseconds of one launch with ``config`` (inf where it cannot run on this GPU)."""
    try:
        return 1e3 * gpu_time(lambda: run(config), reps=_REPS)
    except (triton.runtime.errors.OutOfResources, RuntimeError):
        torch.cuda.synchronize()
        return float("inf")


def tune_bucket(candidates, run) -> tuple[dict | None, float]:
    """Fastest candidate of one bucket and its time in milliseconds."""
    best, best_ms = None, float("inf")
    for config in candidates:
        ms = time_config(run, config)
        if ms < best_ms:
            best, best_ms = config, ms
    return best, best_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_TARGETS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 128], help="max_rank values")
    parser.add_argument("--fresh", action="store_true", help="start from an empty table")
    parser.add_argument("--ops", nargs="+", default=["shrink", "expand", "fused"])
    parser.add_argument("--min-seg-len", type=int, default=1, help="skip shorter buckets")
    parser.add_argument("--max-seg-len", type=int, default=8192, help="skip longer buckets")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--budget-s", type=float, default=float("inf"))
    parser.add_argument("--retune", action="store_true")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name()
    path = table_path(name, dtype)
    table = {} if args.fresh else read_table(path)
    jobs = _jobs(args.models, args.ranks)
    deadline, done = time.monotonic() + args.budget_s, 0
    for op, dim_k, slices, max_rank, (m, s) in jobs:
        if op not in args.ops or not args.min_seg_len <= m <= args.max_seg_len:
            continue
        dim = {"shrink": dim_k, "expand": sum(slices), "fused": f"{dim_k}x{sum(slices)}"}[op]
        key = bucket_key(op, m, s, dim, len(slices), max_rank)
        if key in table and not args.retune:
            continue
        if time.monotonic() > deadline:
            print(f"budget reached after {done} buckets; run again to continue", flush=True)
            break
        candidates, run = bucket_runner(op, dim_k, slices, max_rank, m, s, dtype)
        config, ms = tune_bucket(candidates, run)
        if config is None:
            print(f"{key}: no candidate runs on this GPU; the default stays", flush=True)
            continue
        if op == "fused":
            config = _fused_or_separate(table, config, ms, dim_k, slices, max_rank, m, s)
        previous = _previous_cost(table.get(key), run)
        table[key] = config | {"us": round(ms * 1e3, 2)}
        done += 1
        print(f"{key}: {config} {ms * 1e3:.1f} us{previous}", flush=True)
    write_table(path, name, args.dtype, table)
    print(f"wrote {len(table)} buckets to {path}")


def _previous_cost(entry: dict | None, run) -> str:
    """On ``--retune``: the replaced entry's time under today's timer, so a log shows how much a
    re-tuning (e.g. after a change of timing method) actually gains per bucket."""
    if entry is None or entry.get("path") == "separate":
        return ""
    old = {k: v for k, v in entry.items() if k not in ("us", "note", "separate_us")}
    now_us = time_config(run, old) * 1e3
    return f" (previous config: {now_us:.1f} us now, {entry.get('us')} us recorded)"


def _fused_or_separate(table, config, ms, k, slices, max_rank, m, s) -> dict:
    """Keep the fused kernel for this bucket only if it beats the tuned shrink + expand."""
    pair = [
        table.get(bucket_key(op, m, s, dim, len(slices), max_rank))
        for op, dim in (("shrink", k), ("expand", sum(slices)))
    ]
    if any(p is None for p in pair):
        return {"path": "separate", "note": "shrink/expand not tuned yet"}
    separate_us = pair[0]["us"] + pair[1]["us"]
    if ms * 1e3 < separate_us:
        return config
    return {"path": "separate", "separate_us": separate_us}


def _jobs(models: list[str], ranks: list[int]) -> list[tuple]:
    """(op, K, slices, max_rank, bucket), shrink shapes keyed by K and expand by N (deduped)."""
    jobs, seen = [], set()
    for model, rank, bucket in itertools.product(models, ranks, BUCKETS):
        for k, slices in MODEL_TARGETS[model]:
            n = sum(slices)
            for op, dim in (("shrink", k), ("expand", n), ("fused", f"{k}x{n}")):
                key = (op, dim, len(slices), rank, bucket)
                if key not in seen:
                    seen.add(key)
                    jobs.append((op, k, slices, rank, bucket))
    return jobs


if __name__ == "__main__":
    main()
