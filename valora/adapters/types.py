"""An adapter's weights as the engine holds them: one ``LoRAModule`` per (target, layer).

Layout per module (``K`` = target in_features, ``N`` = out_features, ``r`` = the module's rank):

    a: [num_slices, r, K]   a[s] = PEFT lora_A.weight of slice s (zeros where the adapter does
                            not train that slice)
    b: [r, N]               b[:, off_s:off_{s+1}] = lora_B.weight.T of slice s (times the slice's
                            scaling over ``scaling`` when the slices' scalings differ)

so that ``y[:, slice s] += scaling * (x @ a[s].T) @ b[:, slice s]`` is PEFT's
``scaling_s * B_s(A_s(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoRAModule:
    a: torch.Tensor  # [num_slices, r, K]
    b: torch.Tensor  # [r, N]
    scaling: float

    @property
    def rank(self) -> int:
        return self.b.shape[0]

    def delta_weight(self, slice_offsets: tuple[int, ...]) -> torch.Tensor:
        """Dense scaling * B A as [N, K] fp32 (for merging and references)."""
        rows = [
            self.b[:, lo:hi].float().t() @ self.a[s].float()
            for s, (lo, hi) in enumerate(zip(slice_offsets, slice_offsets[1:]))
        ]
        return self.scaling * torch.cat(rows)


class AdapterUnavailable(ValueError):
    """A registered adapter cannot be served any more: its source vanished or changed since it
    was loaded and validated (only its own requests fail)."""


@dataclass
class LoRAAdapter:
    """Host copy of one adapter (a name and version are given by the registry)."""

    name: str
    modules: dict[tuple[str, int], LoRAModule] = field(default_factory=dict)
    content_hash: str = ""  # of the source read (files' bytes, or the dummy's seed and rank)

    @property
    def rank(self) -> int:
        """The largest module rank: the pool rows the adapter takes."""
        return max((m.rank for m in self.modules.values()), default=0)

    @property
    def num_bytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())

    @property
    def towers(self) -> set[str]:
        return {
            "vision" if t.startswith(("visual.", "merger.")) else "language"
            for t, _ in self.modules
        }

    def pin_memory(self) -> LoRAAdapter:
        for m in self.modules.values():
            m.a, m.b = m.a.pin_memory(), m.b.pin_memory()
        return self
