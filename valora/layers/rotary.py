"""Rotary position embeddings: M-RoPE for the language model, 2-D RoPE for the vision tower.

Both rotate with ``rotate_half`` over the whole head dim (no partial rotation). Angles are computed
in fp32; inverse frequencies are computed once on the CPU at construction (as the reference does)
and copied to the compute device on first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; cos/sin: [T, D] -> rotated x, same dtype as cos/sin."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def _inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    """[dim // 2] fp32: theta^(-2i/dim)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim
    return 1.0 / (theta**exponents)


class _DeviceCached:
    """A CPU tensor with a lazily made copy per device (no module buffers, so the model can be
    built on the meta device and materialised once)."""

    def __init__(self, cpu_tensor: torch.Tensor) -> None:
        self._copies = {torch.device("cpu"): cpu_tensor}

    def on(self, device: torch.device) -> torch.Tensor:
        if device not in self._copies:
            self._copies[device] = self._copies[torch.device("cpu")].to(device)
        return self._copies[device]


class MRotaryEmbedding:
    """Multimodal RoPE (Qwen2-VL).

    positions: [3, T] (temporal, height, width). The head_dim/2 frequency slots are split by
    ``mrope_section`` (e.g. [16, 24, 24]): the first section rotates by the temporal position,
    the next by the height position, the last by the width position. For text tokens the three
    rows are equal and this is ordinary 1-D RoPE.
    """

    def __init__(self, head_dim: int, theta: float, mrope_section: Sequence[int]) -> None:
        if sum(mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {list(mrope_section)} must sum to {head_dim // 2}")
        self.head_dim = head_dim
        self._inv_freq = _DeviceCached(_inverse_frequencies(head_dim, theta))
        # [head_dim // 2]: which position row (0, 1, 2) drives each frequency slot
        rows = torch.repeat_interleave(
            torch.arange(3, device="cpu"), torch.tensor(list(mrope_section), device="cpu")
        )
        self._row_of_slot = _DeviceCached(rows)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """positions [3, T] int -> (cos, sin), each [T, head_dim] in ``dtype``."""
        device = positions.device
        inv_freq = self._inv_freq.on(device)
        angles = positions[..., None].float() * inv_freq  # [3, T, D/2]
        rows = self._row_of_slot.on(device)
        slots = torch.arange(inv_freq.numel(), device=device)
        angles = angles[rows, :, slots].transpose(0, 1)  # [T, D/2], slot j from row rows[j]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class VisionRotaryEmbedding:
    """2-D RoPE of the vision tower: head_dim/4 frequencies, applied to the row index in the first
    quarter-pair and to the column index in the second, then duplicated for rotate_half."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self._inv_freq = _DeviceCached(_inverse_frequencies(head_dim // 2, theta))

    def cos_sin(self, hw_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hw_positions [S, 2] (row, col) -> fp32 (cos, sin), each [S, head_dim]."""
        angles = hw_positions[..., None].float() * self._inv_freq.on(hw_positions.device)
        angles = angles.flatten(1)  # [S, 2 * D/4]: row freqs | col freqs
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()
