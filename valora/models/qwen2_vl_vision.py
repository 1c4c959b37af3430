"""Qwen2-VL vision tower: patch embedding, 2-D rotary ViT blocks, 2x2 patch merger.

Input: the flattened pixel patches of every image in the batch, [num_patches, C*T*P*P] (1176 for
Qwen2-VL), in the processor's order (each 2x2 merge window contiguous), and each image's grid
(t, h, w) in patches. Output: one embedding per merge window, [num_patches / merge^2, out_hidden].
Attention is non-causal and restricted to each image frame (block-diagonal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from valora.config import VisionConfig
from valora.layers.activation import get_activation
from valora.layers.attention import varlen_attention
from valora.layers.linear import Linear
from valora.layers.rotary import VisionRotaryEmbedding, apply_rotary

Grid = Sequence[tuple[int, int, int]]


class PatchEmbed(nn.Module):
    """A Conv3d with stride = kernel over each patch, computed as a matmul on flattened patches."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        # kept as a Conv3d so the weight has the checkpoint's [E, C, T, P, P] shape
        self.proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel, stride=kernel, bias=False)
        self.proj.weight.requires_grad_(False)

    def forward(self, pixel_patches: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return pixel_patches.to(weight.dtype) @ weight.flatten(1).t()  # [P, E]


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = Linear(cfg.embed_dim, [cfg.embed_dim] * 3, bias=True)
        self.proj = Linear(cfg.embed_dim, [cfg.embed_dim], bias=True)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        frame_lens: tuple[int, ...],
    ) -> torch.Tensor:
        num_patches = x.shape[0]
        q, k, v = self.qkv(x).view(num_patches, 3, self.num_heads, -1).unbind(1)
        cos, sin = cos_sin
        # rotary in fp32, as the reference does, then back to the activation dtype
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)
        out = varlen_attention(q, k, v, frame_lens, causal=False, scale=q.shape[-1] ** -0.5)
        return self.proj(out.flatten(1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = Linear(cfg.embed_dim, [cfg.mlp_dim], bias=True)
        self.fc2 = Linear(cfg.mlp_dim, [cfg.embed_dim], bias=True)
        self.act = get_activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        frame_lens: tuple[int, ...],
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos_sin, frame_lens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """LayerNorm, then each 2x2 window's 4 patch vectors concatenated -> MLP -> LLM width."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.window_dim = cfg.embed_dim * cfg.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            Linear(self.window_dim, [self.window_dim], bias=True),
            nn.GELU(),
            Linear(self.window_dim, [cfg.out_hidden_size], bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.window_dim))


def vision_hw_positions(grid_thw: Grid, merge: int, device: torch.device) -> torch.Tensor:
    """(row, col) of every patch in processor order (merge windows contiguous): [P, 2] int64."""
    chunks = []
    for t, h, w in grid_thw:
        rows = torch.arange(h, device=device)[:, None].expand(h, w)
        cols = torch.arange(w, device=device)[None, :].expand(h, w)
        hw = torch.stack((rows, cols), dim=-1)  # [h, w, 2]
        hw = hw.view(h // merge, merge, w // merge, merge, 2).transpose(1, 2).reshape(-1, 2)
        chunks.append(hw.repeat(t, 1))
    return torch.cat(chunks, dim=0)


class Qwen2VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList([VisionBlock(cfg) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg)
        self.rotary = VisionRotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(self, pixel_patches: torch.Tensor, grid_thw: Grid) -> torch.Tensor:
        """pixel_patches [P, patch_dim]; grid_thw: (t, h, w) per image -> [P / merge^2, out]."""
        expected = sum(t * h * w for t, h, w in grid_thw)
        if pixel_patches.shape != (expected, self.cfg.patch_dim):
            raise ValueError(
                f"pixel patches of shape {tuple(pixel_patches.shape)} do not match the grids "
                f"{list(grid_thw)}: expected ({expected}, {self.cfg.patch_dim})"
            )
        frame_lens = tuple(h * w for t, h, w in grid_thw for _ in range(t))
        hw = vision_hw_positions(grid_thw, self.cfg.spatial_merge_size, pixel_patches.device)
        cos_sin = self.rotary.cos_sin(hw)
        x = self.patch_embed(pixel_patches)
        for block in self.blocks:
            x = block(x, cos_sin, frame_lens)
        return self.merger(x)
