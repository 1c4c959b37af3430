"""The merge switch as a unit of the adapter package, for the merge benchmarks (``bench_lora``,
``profile_merge``): a ``LoRAManager`` built directly on dummy weights, no engine around it (the
engine's API switches adapters but does not expose the merger's internals these scripts
measure: its kernels, pristine copies, bytes written).
"""

from __future__ import annotations

import torch

from valora.adapters.manager import LoRAManager
from valora.adapters.types import LoRAAdapter
from valora.config import LoRAConfig
from valora.weights import load_model


def merge_manager(
    setting: str, max_rank: int, dtype: torch.dtype = torch.bfloat16, device: str = "cuda"
) -> LoRAManager:
    """Merging on, LoRA on the language tower, room for two adapters of ``max_rank`` (the one
    merged and one more), the ATMM backend (the VaLoRA policy's), on dummy ``setting`` weights."""
    model = load_model(setting, dtype, device)
    config = LoRAConfig(max_loras=2, max_lora_rank=max_rank, towers=("language",))
    return LoRAManager(model, config, "atmm", True, dtype, device)


def register_subset(lora: LoRAManager, name: str, of: str, targets: tuple[str, ...]) -> None:
    """Register ``name``: the modules of the loaded adapter ``of`` on ``targets`` only."""
    full = lora.registry.weights(lora.resolve(of))
    modules = {k: m for k, m in full.modules.items() if k[0] in targets}
    lora.registry.register(name, lambda: LoRAAdapter(name, modules), "+".join(targets))
