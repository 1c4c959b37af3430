"""Adaptive tiling: the kernel config of each call, looked up by shape bucket in O(1).

A call's bucket is (op, max_seg_len rounded up to a power of two, number of segments rounded up
to a power of two, K for the shrink or N for the expand, number of slices, max_rank). Tables are
measured offline by ``python -m atmm.tuner`` on one GPU and dtype and shipped as JSON in
``atmm/configs/`` (file name: the GPU name and the dtype). At run time the table of the current
GPU and dtype is loaded once; a bucket it lacks (or a GPU with no table) gets ``default_config``,
a safe heuristic, evaluated at the bucket's upper corner so that it too is one config per bucket
(what ``atmm.ops.precompile`` relies on).

A config is a dict: ``path`` ("tile" | "gemv"), ``BLOCK_M`` (tile only), ``BLOCK_K``, ``BLOCK_R``
(shrink) or ``BLOCK_N`` and ``N_TILES`` (expand), ``SPLIT_K`` (shrink), ``num_warps``,
``num_stages``. Op "fused" (shrink and expand in one kernel, ``atmm.ops.fused``) has entries only
where the tuner measured it faster than the separate pair (``path`` "fused"; else "separate").
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from kernel_tables import device_name, pow2_ceil, read_table, table_file

CONFIG_DIR = Path(__file__).parent / "configs"
_GEMV_MAX_SEG_LEN = 4  # default: up to this many rows per segment take the GEMV kernels
_TARGET_PROGRAMS = 264  # default split-K aims at about 2 programs per SM of an H100


def bucket_key(
    op: str, max_seg_len: int, num_segments: int, dim: int | str, num_slices: int, max_rank: int
) -> str:
    return (
        f"{op}|m{pow2_ceil(max_seg_len)}|s{pow2_ceil(num_segments)}|d{dim}"
        f"|l{num_slices}|r{max_rank}"
    )


def table_path(gpu: str, dtype: torch.dtype) -> Path:
    """This GPU and dtype's table in ``CONFIG_DIR``."""
    return table_file(CONFIG_DIR, gpu, dtype)


@cache
def _table(gpu: str, dtype: torch.dtype) -> dict[str, dict]:
    return read_table(table_path(gpu, dtype))


@cache
def get_config(
    op: str,
    max_seg_len: int,
    num_segments: int,
    dim: int,
    num_slices: int,
    max_rank: int,
    dtype: torch.dtype,
    device: torch.device,
) -> dict:
    """The tuned config of this bucket on this GPU and dtype, else the default (memoised per
    argument tuple: the per-call cost is one dict lookup). Callers must not mutate the result."""
    key = bucket_key(op, max_seg_len, num_segments, dim, num_slices, max_rank)
    table = _table(device_name(device), dtype)
    if key in table:
        return table[key]
    # the default of the bucket's upper corner: one config per bucket, as with a table (a
    # config per exact shape would make Triton compile afresh for every new segment count)
    m, s = pow2_ceil(max_seg_len), pow2_ceil(num_segments)
    return default_config(op, m, s, dim, num_slices, max_rank, device)


@cache
def fused_config(
    max_seg_len: int,
    num_segments: int,
    in_features: int,
    out_features: int,
    num_slices: int,
    max_rank: int,
    dtype: torch.dtype,
    device: torch.device,
) -> dict | None:
    """The fused kernel's config where the tuning found it faster than shrink + expand for this
    bucket on this GPU and dtype; None elsewhere (no default: fused only where it wins)."""
    dim = f"{in_features}x{out_features}"
    key = bucket_key("fused", max_seg_len, num_segments, dim, num_slices, max_rank)
    config = _table(device_name(device), dtype).get(key)
    return config if config is not None and config["path"] == "fused" else None


def default_config(
    op: str,
    max_seg_len: int,
    num_segments: int,
    dim: int,
    num_slices: int,
    max_rank: int,
    device: torch.device,
) -> dict:
    """Safe everywhere (power-of-two blocks >= 16); on a GPU, shaped after what the H100 tuning
    picks most: split-K to fill the SMs for short segments, wide N tiles for the expand."""
    if device.type != "cuda":  # the interpreter: small blocks, no split
        block_r = max(16, min(64, pow2_ceil(max_rank)))
        base = {
            "path": "gemv" if max_seg_len <= _GEMV_MAX_SEG_LEN else "tile",
            "BLOCK_M": 16,
            "num_warps": 4,
            "num_stages": 1,
        }
        if op == "shrink":
            return base | {"BLOCK_K": 32, "BLOCK_R": block_r, "SPLIT_K": 1}
        return base | {"BLOCK_K": 16, "BLOCK_N": 32}
    path = "gemv" if max_seg_len <= _GEMV_MAX_SEG_LEN else "tile"
    block_m = 16 if max_seg_len <= 16 else (32 if max_seg_len <= 32 else 64)
    config = {"path": path, "BLOCK_M": block_m, "num_warps": 4, "num_stages": 3}
    if op == "shrink":
        block_k = 128 if path == "gemv" else 64
        block_r = max(16, min(64 if path == "gemv" else 128, pow2_ceil(max_rank)))
        r_chunks = -(-max_rank // block_r)
        m_tiles = max(1, -(-max_seg_len // (1 if path == "gemv" else block_m)))
        programs = num_segments * m_tiles * num_slices * r_chunks
        max_split = max(1, dim // (2 * block_k))
        split_k = max(1, min(max_split, -(-_TARGET_PROGRAMS // programs)))
        return config | {"BLOCK_K": block_k, "BLOCK_R": block_r, "SPLIT_K": split_k}
    return config | {"BLOCK_K": 32 if path == "gemv" else 16, "BLOCK_N": 128, "num_stages": 2}
