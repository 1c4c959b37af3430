"""Compile, ahead of serving, every kernel config the tiling table can pick for one weight shape.

The adaptive tiling (``atmm.config_table``) gives each (max_seg_len, num_segments) bucket its own
config, and Triton compiles a kernel per distinct config on its first launch: about a second
each, paid by whichever request first reaches the bucket. ``precompile`` walks every bucket a
batch of at most ``max_tokens`` rows and ``max_segments`` segments can fall in, and launches each
distinct shrink and expand config once on a one-row scratch input (slot 0, results discarded),
so Triton compiles it and keeps it in its in-memory and on-disk caches. The kernels'
specialisation does not depend on the row count (strides and K are the weight's), so these
binaries are the ones serving calls use.
"""

from __future__ import annotations

import torch

from atmm.config_table import get_config
from atmm.ops.expand import launch_expand
from atmm.ops.shrink import launch_shrink
from atmm.types import LoRASegments, LoRAWeights
from kernel_tables import pow2_ceil


def _pow2_upto(limit: int) -> list[int]:
    """1, 2, 4 ... up to the bucket that holds ``limit`` itself."""
    return [1 << i for i in range(pow2_ceil(limit).bit_length())]


def reachable_buckets(max_tokens: int, max_segments: int) -> list[tuple[int, int]]:
    """(max_seg_len, num_segments) power-of-two buckets that some batch can fall in: a bucket
    (m, s) needs one segment longer than m / 2 and more than s / 2 segments in all."""
    return [
        (m, s)
        for m in _pow2_upto(max_tokens)
        for s in _pow2_upto(max_segments)
        if m // 2 + 1 + s // 2 <= max(max_tokens, 1) and s // 2 < max_segments
    ]


def distinct_configs(
    w: LoRAWeights, max_tokens: int, max_segments: int, dtype: torch.dtype, device: torch.device
) -> dict[str, list[dict]]:
    """{"shrink": [...], "expand": [...]}: the distinct configs over the reachable buckets."""
    out: dict[str, list[dict]] = {"shrink": [], "expand": []}
    for m, s in reachable_buckets(max_tokens, max_segments):
        for op, dim in (("shrink", w.in_features), ("expand", w.out_features)):
            config = get_config(op, m, s, dim, w.num_slices, w.max_rank, dtype, device)
            plain = {k: v for k, v in config.items() if k != "us"}  # timings are not config
            if plain not in out[op]:
                out[op].append(plain)
    return out


def precompile(w: LoRAWeights, max_tokens: int, max_segments: int, dtype: torch.dtype) -> int:
    """Launch each distinct shrink and expand config of ``w``'s shape once; returns how many.
    ``w`` is only read (its slot 0); the outputs go to scratch tensors."""
    device = w.a.device
    configs = distinct_configs(w, max_tokens, max_segments, dtype, device)
    x = torch.zeros(1, w.in_features, dtype=dtype, device=device)
    y = torch.zeros(1, w.out_features, dtype=dtype, device=device)
    v = torch.zeros(1, w.num_slices, w.max_rank, dtype=torch.float32, device=device)
    segs = LoRASegments.build([1], [0], device)
    for config in configs["shrink"]:
        launch_shrink(x, w.a, v, segs, w.ranks, config)
    for config in configs["expand"]:
        launch_expand(v, w.b, y, segs, w.ranks, w.scalings, w.slice_offsets, config)
    return len(configs["shrink"]) + len(configs["expand"])
