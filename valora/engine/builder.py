"""The one place that builds an engine: config -> ready ``LLMEngine``.

In order: resolve device and dtype; decide the weights and their effective quantization before
loading anything (``weights_plan``); load them; the orchestration policy; the LoRA manager
(adapter pool, and merged mode's memory: pristine copies on a dense base, dense overlays on a
quantized one where they fit); the KV blocks from the memory left (``memory``); the attention
backend; the scheduler; the forward strategy (CUDA graphs where everything in the step is
graph-safe, eager otherwise); the runner.
"""

from __future__ import annotations

import dataclasses

import torch

from valora.adapters.manager import LoRAManager, lora_targets
from valora.adapters.merge import overlay_bytes
from valora.block_manager import BlockManager
from valora.config import EngineConfig
from valora.cuda_graphs import DecodeGraphs, GraphForward
from valora.engine.llm_engine import EngineParts, LLMEngine
from valora.engine.memory import num_kv_blocks, overlays_fit
from valora.engine.weights_plan import WeightsPlan, load_weights, plan_weights
from valora.forward import EagerForward
from valora.layers.paged_attention import KVCache, TorchPagedAttention
from valora.model_runner import ModelRunner
from valora.orchestrator import make_policy
from valora.output_processor import OutputProcessor
from valora.processor_config import load_processor_configs
from valora.scheduler import OpenGate, Scheduler
from valora.tokenizer import Tokenizer

# EngineConfig.dtype names -> torch dtypes
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_engine(config: EngineConfig) -> LLMEngine:
    config = resolve_device(config)
    plan = plan_weights(config.model, config.quantization)  # before anything is loaded
    dtype = TORCH_DTYPES[config.dtype]
    model = load_weights(plan, dtype, config.device, config.seed)
    tokenizer = Tokenizer.load(None if plan.is_dummy else config.model)
    processors = load_processor_configs(
        None if plan.is_dummy else config.model, config.processor_overrides
    )
    sched_cfg = config.scheduler
    policy = make_policy(sched_cfg.policy, **dict(sched_cfg.policy_options))
    lora = _lora_manager(config, plan, model, policy, dtype)  # before the KV cache: GPU memory
    variants = _lora_variants(lora)
    num_blocks = num_kv_blocks(config, plan.model_config, dtype, len(variants))
    cfg = plan.model_config
    kv_cache = KVCache(
        cfg.num_hidden_layers,
        num_blocks,
        config.block_size,
        cfg.num_key_value_heads,
        cfg.head_dim,
        dtype,
        config.device,
    )
    model.attn_backend = _attention_backend(kv_cache, config.device)
    block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
    max_len = min(sched_cfg.max_model_len, cfg.max_position_embeddings)
    sched_cfg = dataclasses.replace(sched_cfg, max_model_len=max_len)
    scheduler = Scheduler(sched_cfg, block_manager, policy, lora or OpenGate())
    overlays = lora is not None and lora.merger is not None and lora.merger.has_overlays
    policy.bind(num_blocks * config.block_size, overlay_merges=overlays)
    forward = _forward_strategy(config, model, kv_cache, lora, sched_cfg, variants)
    # one vision pass encodes at most a step's token budget of image tokens
    runner = ModelRunner(
        model, kv_cache, forward=forward, lora=lora, encoder_budget=sched_cfg.max_num_batched_tokens
    )
    parts = EngineParts(
        config,
        plan,
        model,
        tokenizer,
        policy,
        lora,
        block_manager,
        scheduler,
        runner,
        OutputProcessor(tokenizer, max_len),
        *processors,
    )
    return LLMEngine(parts)


def resolve_device(config: EngineConfig) -> EngineConfig:
    """``device`` None -> cuda when available; ``dtype`` auto -> bfloat16 on a GPU, else fp32."""
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return dataclasses.replace(config, device=device, dtype=dtype)


def _lora_manager(
    config: EngineConfig, plan: WeightsPlan, model, policy, dtype: torch.dtype
) -> LoRAManager | None:
    lora = config.lora
    if lora is None:
        return None
    backend = lora.backend or policy.backend
    can_merge = policy.can_merge and _merge_memory_fits(config, plan, model, dtype)
    return LoRAManager(model, lora, backend, can_merge, dtype, config.device)


def _merge_memory_fits(config: EngineConfig, plan: WeightsPlan, model, dtype) -> bool:
    """Merged mode is free on a dense base (the pristine copies are the policy's cost); on a
    quantized base (RTN or a packed checkpoint) its dense overlays must fit (``quant_merge``).
    Without them every step runs unmerged: the policy's merge plans are not carried out."""
    if not plan.is_quantized:
        return True
    if config.quant_merge == "off":
        return False
    need = overlay_bytes(model, lora_targets(plan.model_config, config.lora))
    return overlays_fit(config, plan.model_config, dtype, need)


def _lora_variants(lora: LoRAManager | None) -> tuple[str, ...]:
    """Decode-graph variants with LoRA rows or merged weights (besides "none")."""
    if lora is None:
        return ()
    if lora.merger is None:
        return ("unmerged",)
    overlays = lora.merger.has_overlays  # merged steps compute on other weights
    return ("unmerged", "mixture", "merged") if overlays else ("unmerged", "mixture")


def _forward_strategy(
    config: EngineConfig, model, kv_cache: KVCache, lora, sched_cfg, variants: tuple[str, ...]
):
    """Captured decode graphs on CUDA (unless enforce_eager, or the attention backend reads
    host-side lengths, or the LoRA backend must re-prepare its pool views after adapter
    loads), eager forwards otherwise."""
    runtime = None if lora is None else lora.runtime
    eager = EagerForward(model, runtime)
    graph_safe = getattr(model.attn_backend, "graph_safe", False)
    if runtime is not None:
        graph_safe = graph_safe and runtime.backend.graph_safe and runtime.static_prepare
    if not config.on_gpu or config.enforce_eager or not graph_safe:
        return eager
    merger = None if lora is None else lora.merger
    overlays = merger is not None and merger.has_overlays
    graphs = DecodeGraphs(
        model,
        kv_cache,
        sched_cfg.max_num_seqs,
        sched_cfg.max_model_len,
        runtime,
        ("none", *variants),
        merger.overlays_active if overlays else None,
    )
    graphs.capture()
    return GraphForward(graphs, eager)


def _attention_backend(kv_cache: KVCache, device: str):
    """Triton kernels on the GPU, the torch implementation elsewhere (chosen once)."""
    if device.startswith("cuda"):
        try:
            from valora.layers.triton_attention import TritonPagedAttention
        except ImportError:
            return TorchPagedAttention(kv_cache)
        return TritonPagedAttention(kv_cache)
    return TorchPagedAttention(kv_cache)
