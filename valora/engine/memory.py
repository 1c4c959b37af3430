"""GPU memory planning: what is left for the KV cache once the weights, the adapter pool and the
merge overlays are in place, and how many KV blocks that makes.

Order (the builder's): weights, then the LoRA manager (pool, pristine copies or overlays), then
the KV blocks from what is left, less the decode graphs' logits buffers. On the CPU the budget is
fixed (16,384 tokens unless ``num_token`` says otherwise).
"""

from __future__ import annotations

import torch

from valora.config import EngineConfig, ModelConfig
from valora.cuda_graphs import capture_sizes
from valora.layers.paged_attention import KVCache

CPU_KV_TOKENS = 16384
HEADROOM_BYTES = 1 << 30


def usable_bytes(config: EngineConfig) -> float:
    """GPU memory left for the KV cache now: the utilization share, less what is in use and
    1 GiB headroom."""
    free, total = torch.cuda.mem_get_info()
    return total * config.gpu_memory_utilization - (total - free) - HEADROOM_BYTES


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    return KVCache.bytes_per_token(
        cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, dtype
    )


def overlays_fit(
    config: EngineConfig, cfg: ModelConfig, dtype: torch.dtype, need_bytes: int
) -> bool:
    """Whether the dense merge overlays of a quantized base get their memory (``quant_merge``
    "auto": at most half of what the KV cache would get; "on": an error if they do not fit)."""
    if not config.device.startswith("cuda"):
        return True
    usable = usable_bytes(config)
    if config.num_token is not None:
        usable -= config.num_token * kv_bytes_per_token(cfg, dtype)
        fits = need_bytes <= usable
    else:
        fits = need_bytes <= usable / 2
    if config.quant_merge == "on" and not fits:
        raise ValueError(
            f"quant_merge='on': the merge overlays need {need_bytes / 2**30:.1f} "
            f"GiB, {max(usable, 0) / 2**30:.1f} GiB is left"
        )
    return fits


def num_kv_blocks(
    config: EngineConfig, cfg: ModelConfig, dtype: torch.dtype, num_graph_variants: int
) -> int:
    """KV blocks from the budget (``num_token``), the CPU default, or the GPU memory left after
    the decode graphs' logits buffers (one per captured batch size and LoRA variant)."""
    if config.num_token is not None:
        return max(1, config.num_token // config.block_size)
    if not config.device.startswith("cuda"):
        return CPU_KV_TOKENS // config.block_size
    usable = usable_bytes(config)
    if not config.enforce_eager:
        sizes = sum(capture_sizes(config.scheduler.max_num_seqs))
        usable -= num_graph_variants * sizes * cfg.vocab_size * 4
    per_block = kv_bytes_per_token(cfg, dtype) * config.block_size
    return max(1, int(usable // per_block) - 1)  # - the scratch block
