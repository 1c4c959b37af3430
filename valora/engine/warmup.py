"""Engine warm-up: run, once before serving, the kernels a first burst of requests would
otherwise compile (Triton JIT) or tune on the fly, so the first users do not pay for it.

A few synthetic requests go through the normal engine path together: prompts of several lengths
(prefill buckets of the LoRA kernels, chunked prefill), the base model and a few adapters (the
unmerged segments; with a merging policy, the merge and the mixture corrections), two with an
image (the vision tower), each decoding a few tokens (the decode graphs). They finish and free
their blocks like any request; with a merging policy one adapter per rank class is then
merged, and the last unmerged (the merge kernels); the policy then forgets what it measured
(compile time).

Before them, a LoRA backend with adaptive tiling (ATMM) compiles every config its table can pick
for each target's shape (``precompile_lora``), and a quantized base runs each distinct quantized
linear once per M bucket of its table (``precompile_quant``): the requests reach only some of the
buckets, and a bucket first met under load would stall its step for the compile.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from valora.adapters.merge_kernels import rank_tile
from valora.engine.llm_engine import LLMEngine
from valora.sampling_params import SamplingParams


class WarmupReport(NamedTuple):
    seconds: float  # in all
    compile_seconds: float  # of which precompiling the LoRA and quantized-GEMM kernels
    kernel_configs: int  # LoRA configs and quantized-GEMM M buckets (calls) precompiled


def warmup(
    engine: LLMEngine,
    lengths: tuple[int, ...] = (16, 256, 2048),
    num_adapters: int = 3,
    decode_tokens: int = 4,
) -> WarmupReport:
    """Precompile the LoRA kernels, then run the warm-up requests to completion."""
    start = time.perf_counter()
    configs = precompile_lora(engine) + precompile_quant(engine)
    compiled = time.perf_counter()
    names = engine.lora.registry.names()[:num_adapters] if engine.lora is not None else []
    adapters = [None, *names]
    capacity = engine.block_manager.num_blocks * engine.block_manager.block_size
    limit = min(engine.scheduler.config.max_model_len, capacity) // (
        len(lengths) * len(adapters) + 2
    )
    rng = np.random.default_rng(0)
    sizes = [min(n, limit) - decode_tokens for n in lengths if min(n, limit) > decode_tokens]
    prompts = [
        ({"prompt_token_ids": rng.integers(1000, 20000, size=size).tolist()}, adapter)
        for size in sizes
        for adapter in adapters
    ]
    prompts += [(_image_prompt(engine), adapter) for adapter in adapters[:2]]
    params = SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(prompts):
        engine.add_request(f"warmup-{i}", prompt, params, adapter)
    while engine.has_unfinished():
        engine.step()
    if engine.lora is not None and engine.lora.merger is not None:
        warm_merges(engine)
    engine.policy.forget()  # its steps and switches include compile time
    return WarmupReport(time.perf_counter() - start, compiled - start, configs)


def warm_merges(engine: LLMEngine) -> int:
    """Merge and unmerge one adapter per rank class (one compiled merge kernel per rank tile,
    ``rank_tile``); returns the switches made."""
    lora, classes = engine.lora, {}
    for name in lora.registry.names():
        key = lora.resolve(name)
        rank = lora.registry.rank(key)  # registered metadata: no weights loaded to find it
        classes.setdefault(rank_tile(rank), key)
    for key in classes.values():
        engine.switch_merged(key)
    engine.switch_merged(None)
    return len(classes) + 1


def precompile_lora(engine: LLMEngine) -> int:
    """Compile the LoRA kernels of every bucket a step can reach, per target shape (configs
    depend on the shape only, so layer 0 stands for all); returns the configs compiled."""
    lora = engine.lora
    backend = lora.runtime.backend if lora is not None else None
    if not hasattr(backend, "precompile"):
        return 0
    return sum(backend.precompile(w, rows, segs) for w, rows, segs in lora_kernel_limits(engine))


def lora_kernel_limits(engine: LLMEngine) -> list[tuple]:
    """(layer-0 ``LoRAWeights``, most rows, most segments) per LoRA target: the largest launch
    a step can make. A step's language rows are bounded by the token budget; a vision pass
    encodes whole requests up to the same budget of image tokens, or one request's (up to the
    context length) alone, one segment per request; patch rows are merge^2 per image token."""
    if engine.lora is None:
        return []
    sched = engine.scheduler.config
    windows = max(sched.max_model_len, sched.max_num_batched_tokens)
    patches = windows * engine.model_config.vision.spatial_merge_size**2
    limits = {
        "language": (sched.max_num_batched_tokens, sched.max_num_seqs),
        "vision": (patches, sched.max_num_seqs),
        "merger": (windows, sched.max_num_seqs),
    }
    return [
        (buffers.weights[0], *limits[buffers.spec.row_group])
        for buffers in engine.lora.pool.targets.values()
    ]


def precompile_quant(engine: LLMEngine) -> int:
    """One call per M bucket of each distinct quantized linear shape on the GPU (each bucket has
    its own kernel config); returns the calls made."""
    from valora.quant.config_table import M_BUCKETS
    from valora.quant.linear import QuantLinear
    from valora.quant.triton_gemm import quant_matmul

    seen = set()
    for module in engine.model.modules():
        if not isinstance(module, QuantLinear) or not module.quantized.qweight.is_cuda:
            continue
        q = module.quantized
        shape = (q.out_features, q.in_features, q.bits, q.group_size, q.g_idx is not None)
        if shape in seen:
            continue
        seen.add(shape)
        for m in M_BUCKETS:
            x = torch.zeros(m, q.in_features, dtype=module.dtype, device=q.qweight.device)
            quant_matmul(x, q)
    return len(seen) * len(M_BUCKETS)


def _image_prompt(engine: LLMEngine) -> dict:
    pixels = np.linspace(0, 255, 448 * 448 * 3).reshape(448, 448, 3).astype(np.uint8)
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    )
    return {"prompt": text, "multi_modal_data": {"image": [Image.fromarray(pixels)]}}
