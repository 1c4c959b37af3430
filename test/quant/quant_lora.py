"""LoRA on a quantized tiny model for the quantized-merge tests: a ``LoRAManager`` built directly
on the W4A16 / W8A16 model (units of the adapter package: overlay contents, switches), partial
dummy adapters (some targets only), and a PEFT directory writer so an engine loads the same
adapters through its API."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from valora.adapters.manager import LoRAManager
from valora.adapters.peft_loader import dummy_adapter
from valora.adapters.targets import model_targets
from valora.adapters.types import LoRAAdapter
from valora.config import LoRAConfig, ModelConfig
from valora.engine.weights_plan import load_weights, plan_weights


def quantized_manager(method: str = "w4a16", seed: int = 0) -> tuple[nn.Module, LoRAManager]:
    """(the quantized tiny model, its manager): merging on (a quantized base: every merge site
    is a dense overlay), the torch backend, fp32 on the CPU."""
    model = load_weights(plan_weights("tiny", method), torch.float32, "cpu", seed)
    return model, LoRAManager(model, LoRAConfig(), "torch", True, torch.float32, "cpu")


def partial_adapter(
    name: str, cfg: ModelConfig, targets: set[str], seed: int, rank: int = 8
) -> LoRAAdapter:
    """A dummy adapter trained on ``targets`` only (as a PEFT q/v adapter leaves o, gate_up,
    down alone)."""
    adapter = dummy_adapter(name, cfg, rank, seed, torch.float32, ("language", "vision"))
    adapter.modules = {k: m for k, m in adapter.modules.items() if k[0] in targets}
    assert adapter.modules  # the targets exist
    return adapter


def write_peft(adapter: LoRAAdapter, cfg: ModelConfig, path: Path) -> str:
    """``adapter`` as a PEFT directory (one lora_A / lora_B pair per trained slice) that loads
    back to the same modules: one rank, one scaling (alpha = scaling * r)."""
    specs = {spec.name: spec for spec in model_targets(cfg)}
    ranks = {m.rank for m in adapter.modules.values()}
    scalings = {m.scaling for m in adapter.modules.values()}
    assert len(ranks) == 1 and len(scalings) == 1, "one rank and one scaling per adapter"
    tensors = {}
    for (target, layer), module in adapter.modules.items():
        spec = specs[target]
        parent = spec.module_path(layer).rsplit(".", 1)[0]  # model.layers.N.self_attn
        offsets = spec.slice_offsets
        for s, peft_name in enumerate(spec.peft_names):
            leaf = peft_name.rsplit(".", 1)[-1]  # self_attn.q_proj -> q_proj
            key = f"base_model.model.{parent}.{leaf}"
            tensors[f"{key}.lora_A.weight"] = module.a[s].contiguous()  # [r, K]
            b = module.b[:, offsets[s] : offsets[s + 1]]
            tensors[f"{key}.lora_B.weight"] = b.t().contiguous()  # [N_s, r]
    rank, scaling = ranks.pop(), scalings.pop()
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": scaling * rank, "bias": "none"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, path / "adapter_model.safetensors")
    return str(path)
