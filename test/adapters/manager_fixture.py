"""A LoRA manager on the tiny model with dummy adapters, built directly (unit tests of the
adapter package: merges, pool, registry), not reached through an engine."""

from __future__ import annotations

import torch

from valora.adapters.manager import LoRAManager
from valora.config import LoRAConfig
from valora.weights import load_model


def dummy_manager(
    device: str = "cpu", dtype: torch.dtype = torch.float32, ranks: tuple[int, ...] = (8, 16, 32)
) -> LoRAManager:
    """Adapters lora0.. of ``ranks`` (seeds 1..), merging enabled, the torch LoRA backend."""
    model = load_model("tiny", dtype, device)
    manager = LoRAManager(model, LoRAConfig(), "torch", True, dtype, device)
    for i, rank in enumerate(ranks):
        manager.add_dummy(f"lora{i}", rank, seed=1 + i)
    return manager
