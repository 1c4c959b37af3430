"""Engine warm-up: run, once before serving, the kernels a first burst of requests would
otherwise compile (Triton JIT) or tune on the fly, so the first users do not pay for it.

A few synthetic requests go through the normal engine path together: prompts of several lengths
(prefill buckets of the LoRA kernels, chunked prefill), the base model and a few adapters (the
unmerged segments; with a merging policy, the merge and the mixture corrections), two with an
image (the vision tower), each decoding a few tokens (the decode graphs). They finish and free
their blocks like any request; the policy then forgets what it measured (compile time).
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from valora.engine import LLMEngine
from valora.sampling_params import SamplingParams


def warmup(engine: LLMEngine, lengths: tuple[int, ...] = (16, 256, 2048),
           num_adapters: int = 3, decode_tokens: int = 4) -> float:  # fmt: skip
    """Run the warm-up requests to completion; returns the seconds taken."""
    start = time.perf_counter()
    names = engine.lora.registry.names()[:num_adapters] if engine.lora is not None else []
    adapters = [None, *names]
    capacity = engine.block_manager.num_blocks * engine.block_manager.block_size
    limit = min(engine.scheduler.config.max_model_len, capacity) // (
        len(lengths) * len(adapters) + 2
    )
    rng = np.random.default_rng(0)
    sizes = [min(n, limit) - decode_tokens for n in lengths if min(n, limit) > decode_tokens]
    prompts = [({"prompt_token_ids": rng.integers(1000, 20000, size=size).tolist()}, adapter)
               for size in sizes for adapter in adapters]  # fmt: skip
    prompts += [(_image_prompt(engine), adapter) for adapter in adapters[:2]]
    params = SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(prompts):
        engine.add_request(f"warmup-{i}", prompt, params, adapter)
    while engine.has_unfinished():
        engine.step()
    engine.policy.forget()  # its steps and switches include compile time
    return time.perf_counter() - start


def _image_prompt(engine: LLMEngine) -> dict:
    pixels = np.linspace(0, 255, 448 * 448 * 3).reshape(448, 448, 3).astype(np.uint8)
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    )
    return {"prompt": text, "multi_modal_data": {"image": [Image.fromarray(pixels)]}}
