"""Qwen2-VL: vision tower + Qwen2 language model with M-RoPE.

The model runs on *flattened* batches, the shape a paged engine feeds: the tokens of every
sequence are concatenated ([T]), each token carries explicit M-RoPE positions ([3, T]), and an
``AttentionMetadata`` says where each sequence starts. Images are encoded separately
(``encode_images``) and their embeddings are written over the ``<|image_pad|>`` rows, in order.

Parameter names follow the original checkpoint layout (``model.layers.N...``, ``visual...``,
``lm_head``) except that q/k/v are stacked into ``qkv_proj`` and gate/up into ``gate_up_proj``;
``valora.weights`` maps checkpoint tensors onto those slices.
"""

from __future__ import annotations

import torch
from torch import nn

from valora.config import ModelConfig
from valora.layers.attention import AttentionMetadata, TorchPrefillAttention
from valora.layers.kernels import TorchKernels
from valora.layers.linear import Linear
from valora.layers.norm import RMSNorm
from valora.layers.rotary import MRotaryEmbedding
from valora.models.qwen2_vl_vision import Grid, Qwen2VisionTower


class Qwen2VLAttention(nn.Module):
    """GQA self-attention; q/k/v biased, o unbiased."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, [q_size, kv_size, kv_size], bias=True)
        self.o_proj = Linear(q_size, [cfg.hidden_size], bias=False)

    def forward(
        self, x: torch.Tensor, cos_sin, metadata, attn_backend, kernels: type[TorchKernels]
    ) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.output_sizes, dim=-1)
        q, k = kernels.rotary(
            q.view(num_tokens, self.num_heads, self.head_dim),
            k.view(num_tokens, self.num_kv_heads, self.head_dim),
            *cos_sin,
        )
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        return self.o_proj(attn_backend(self.layer_id, q, k, v, metadata))


class Qwen2VLMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "silu":
            raise ValueError(f"unsupported language-model activation {cfg.hidden_act!r}")
        inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, [inter, inter], bias=False)
        self.down_proj = Linear(inter, [cfg.hidden_size], bias=False)

    def forward(self, x: torch.Tensor, kernels: type[TorchKernels]) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


class Qwen2VLDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen2VLAttention(cfg, layer_id)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Qwen2VLMLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        metadata,
        attn_backend,
        kernels: type[TorchKernels],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) -> (x', residual'): the residual stream is ``x + residual`` (``x`` alone
        in the first layer); the sum and the next norm are one ``add_rms_norm``."""
        norm = self.input_layernorm
        if residual is None:
            residual, x = x, kernels.rms_norm(x, norm.weight, norm.eps)
        else:
            x, residual = kernels.add_rms_norm(x, residual, norm.weight, norm.eps)
        x = self.self_attn(x, cos_sin, metadata, attn_backend, kernels)
        norm = self.post_attention_layernorm
        x, residual = kernels.add_rms_norm(x, residual, norm.weight, norm.eps)
        return self.mlp(x, kernels), residual


class Qwen2VLTextModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(
            [Qwen2VLDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2VLForConditionalGeneration(nn.Module):
    """Our Qwen2-VL; ``attn_backend`` is the attention strategy (``valora.layers.attention``)."""

    def __init__(self, cfg: ModelConfig, attn_backend=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = Qwen2VisionTower(cfg.vision)
        self.model = Qwen2VLTextModel(cfg)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(cfg.hidden_size, [cfg.vocab_size], bias=False)
        )
        self.rotary = MRotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
        self.attn_backend = attn_backend or TorchPrefillAttention()
        self.kernels = TorchKernels  # the small-op strategy (valora.layers.kernels)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def encode_images(self, pixel_patches: torch.Tensor, grid_thw: Grid) -> torch.Tensor:
        """[num_patches, patch_dim] -> [num_image_tokens, hidden] (all images, in order)."""
        return self.visual(pixel_patches.to(self.device), grid_thw)

    def embed(
        self,
        input_ids: torch.Tensor,
        image_embeds: torch.Tensor | None,
        image_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with rows ``image_rows`` (default: every ``<|image_pad|>`` and
        ``<|video_pad|>`` row) replaced, in order, by ``image_embeds`` [len(image_rows), hidden]
        (the embeddings of the prompt's images and videos in prompt order)."""
        x = self.model.embed_tokens(input_ids)
        if image_rows is None:
            pads = (input_ids == self.cfg.image_token_id) | (input_ids == self.cfg.video_token_id)
            image_rows = pads.nonzero().squeeze(1)
        num_embeds = 0 if image_embeds is None else image_embeds.shape[0]
        if image_rows.numel() != num_embeds:
            raise ValueError(f"{image_rows.numel()} image rows but {num_embeds} image embeddings")
        if num_embeds:
            x[image_rows] = image_embeds.to(x.dtype)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        image_embeds: torch.Tensor | None = None,
        image_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [T], positions [3, T] -> final hidden states [T, hidden] (after the norm).

        ``metadata`` is whatever the attention backend needs (``AttentionMetadata`` for the
        cache-less backend, ``PagedAttentionMetadata`` for the paged ones)."""
        if positions.shape != (3, input_ids.shape[0]):
            raise ValueError(f"positions must be [3, {input_ids.shape[0]}], got {positions.shape}")
        x = self.embed(input_ids, image_embeds, image_rows)
        cos_sin = self.rotary.cos_sin(positions, x.dtype)
        residual = None
        for layer in self.model.layers:
            x, residual = layer(x, residual, cos_sin, metadata, self.attn_backend, self.kernels)
        norm = self.model.norm
        return self.kernels.add_rms_norm(x, residual, norm.weight, norm.eps)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> fp32 logits [N, vocab]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return (hidden @ weight.t()).float()
