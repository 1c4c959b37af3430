"""ATMM's public ops: shrink, expand and both, with the tiling picked per call shape.

Semantics, shapes and dtypes: ``atmm.types`` (x, y, a, b share one dtype: fp16, bf16 or fp32;
v and all accumulation are fp32; scalings fp32). The config of each launch comes from the tuned
table of the current GPU and dtype (``atmm.config_table``) unless one is given.
"""

from __future__ import annotations

import torch

from atmm.config_table import fused_config, get_config
from atmm.ops.expand import launch_expand
from atmm.ops.fused import launch_fused
from atmm.ops.precompile import precompile
from atmm.ops.shrink import launch_shrink
from atmm.types import LoRASegments, LoRAWeights, check_call


def shrink_config(x: torch.Tensor, w: LoRAWeights, segs: LoRASegments) -> dict:
    return get_config(
        "shrink",
        segs.max_seg_len,
        segs.num_segments,
        w.in_features,
        w.num_slices,
        w.max_rank,
        x.dtype,
        x.device,
    )


def expand_config(y: torch.Tensor, w: LoRAWeights, segs: LoRASegments) -> dict:
    return get_config(
        "expand",
        segs.max_seg_len,
        segs.num_segments,
        w.out_features,
        w.num_slices,
        w.max_rank,
        y.dtype,
        y.device,
    )


def lora_shrink(
    x: torch.Tensor,
    w: LoRAWeights,
    segs: LoRASegments,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """x [T, K] -> v [T, num_slices, max_rank] fp32 with v[t, s, :r] = x[t] @ a[slot, s, :r]^T
    for rows of segments with an adapter (other entries unspecified)."""
    check_call(x, None, w, segs)
    shape = (x.shape[0], w.num_slices, w.max_rank)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=x.device)
    if out.shape != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous fp32 tensor of shape {shape}")
    if x.shape[0] and segs.num_segments:
        launch_shrink(x, w.a, out, segs, w.ranks, config or shrink_config(x, w, segs))
    return out


def lora_expand(
    v: torch.Tensor,
    y: torch.Tensor,
    w: LoRAWeights,
    segs: LoRASegments,
    config: dict | None = None,
) -> torch.Tensor:
    """In place: y[t, slice s] += c * v[t, s, :r] @ b[slot, :r, slice s]; returns y."""
    check_call(None, y, w, segs)
    shape = (y.shape[0], w.num_slices, w.max_rank)
    if v.shape != shape or v.dtype != torch.float32 or not v.is_contiguous():
        raise ValueError(f"v must be a contiguous fp32 tensor of shape {shape}")
    if y.shape[0] and segs.num_segments:
        launch_expand(
            v,
            w.b,
            y,
            segs,
            w.ranks,
            w.scalings,
            w.slice_offsets,
            config or expand_config(y, w, segs),
        )
    return y


def add_lora(y: torch.Tensor, x: torch.Tensor, w: LoRAWeights, segs: LoRASegments) -> torch.Tensor:
    """In place: y += the LoRA term of every segment; returns y. One fused kernel where the
    tuned table says it wins for this shape, else shrink then expand."""
    check_call(x, y, w, segs)  # once: the launches below skip the per-op checks
    if not (x.shape[0] and segs.num_segments):
        return y
    fused = fused_config(
        segs.max_seg_len,
        segs.num_segments,
        w.in_features,
        w.out_features,
        w.num_slices,
        w.max_rank,
        x.dtype,
        x.device,
    )
    if fused is not None:
        launch_fused(x, w, y, segs, fused)
    else:
        v = torch.empty(x.shape[0], w.num_slices, w.max_rank, dtype=torch.float32, device=x.device)
        launch_shrink(x, w.a, v, segs, w.ranks, shrink_config(x, w, segs))
        launch_expand(
            v, w.b, y, segs, w.ranks, w.scalings, w.slice_offsets, expand_config(y, w, segs)
        )
    return y


class ATMMBackend:
    """``atmm.backends`` interface over the adaptive-tiling kernels."""

    name = "atmm"
    graph_safe = True
    static_prepare = True  # prepare() keeps the pool tensors: valid while their contents change

    def prepare(self, weights: LoRAWeights) -> LoRAWeights:
        return weights

    def add_lora(
        self, y: torch.Tensor, x: torch.Tensor, w: LoRAWeights, segs: LoRASegments
    ) -> None:
        add_lora(y, x, w, segs)

    # the two halves, for callers that overlap the shrink with other work (another stream)
    def shrink(
        self, x: torch.Tensor, w: LoRAWeights, segs: LoRASegments, out: torch.Tensor
    ) -> None:
        lora_shrink(x, w, segs, out=out)

    def expand(self, v: torch.Tensor, y: torch.Tensor, w: LoRAWeights, segs: LoRASegments) -> None:
        lora_expand(v, y, w, segs)

    def precompile(self, w: LoRAWeights, max_tokens: int, max_segments: int) -> int:
        """Compile every shrink and expand config ``w``'s shape can use (``atmm.ops.precompile``;
        the halves, as the engine calls them on CUDA); returns how many."""
        return precompile(w, max_tokens, max_segments, w.a.dtype)
