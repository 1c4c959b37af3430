"""Attention over flattened variable-length batches.

Tokens of all sequences in a batch are concatenated: q is [T, num_heads, D] and sequence i covers
rows ``cu_seqlens[i]:cu_seqlens[i+1]``. ``seq_lens`` is kept as a host list so splitting needs no
device sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AttentionMetadata:
    """Layout of one flattened batch: sequence i owns the next ``seq_lens[i]`` tokens."""

    seq_lens: tuple[int, ...]

    @classmethod
    def for_lengths(cls, seq_lens: list[int] | tuple[int, ...]) -> AttentionMetadata:
        if any(n <= 0 for n in seq_lens):
            raise ValueError(f"every sequence needs at least one token, got lengths {seq_lens}")
        return cls(tuple(int(n) for n in seq_lens))

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: tuple[int, ...],
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """softmax(q k^T * scale [+ causal mask]) v within each sequence; GQA when k has fewer heads.

    q: [T, Hq, D]; k, v: [T, Hkv, D] with Hq % Hkv == 0 -> out [T, Hq, D].
    """
    outputs = [
        token_major_sdpa(qs, ks, vs, scale, is_causal=causal)
        for qs, ks, vs in zip(q.split(seq_lens), k.split(seq_lens), v.split(seq_lens))
    ]
    return torch.cat(outputs, dim=0)


def token_major_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA of one sequence in token-major layout: q [n, Hq, D], k/v [m, Hkv, D] -> [n, Hq, D];
    GQA when Hkv < Hq; ``mask`` [n, m] bool (True = may attend).

    The inputs go in as [1, H, n, D]: the fused backends (flash, memory-efficient) take 4-D
    tensors only, and a 3-D call falls back to the math backend (fp32 matmuls, host-bound)."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return out[0].transpose(0, 1)


class TorchPrefillAttention:
    """Causal attention of each sequence over its own tokens (no KV cache).

    The paged backends (CPU torch and GPU Triton) replace this one with the same call shape:
    ``backend(layer_id, q, k, v, metadata) -> [T, Hq * D]``.
    """

    def __call__(
        self,
        layer_id: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        out = varlen_attention(q, k, v, metadata.seq_lens, causal=True, scale=scale)
        return out.flatten(1)
