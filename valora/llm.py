"""Offline API mirroring vLLM's ``LLM``: ``LLM(model=...).generate(prompts, sampling_params)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from tqdm import tqdm

from valora.adapters.manager import LoRAConfig
from valora.adapters.peft_loader import dummy_ranks as dummy_ranks_for
from valora.engine import EngineConfig, LLMEngine
from valora.inputs import PromptType
from valora.request import RequestOutput
from valora.sampling_params import RequestOutputKind, SamplingParams
from valora.scheduler import SchedulerConfig

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LLM:
    """``model`` is a model setting (``tiny``, ``qwen2-vl-2b``, ``qwen2-vl-7b``: dummy weights)
    or a checkpoint directory. ``num_token`` is the KV-cache budget in tokens (None: from
    ``gpu_memory_utilization`` on a GPU). ``scheduler`` names the admission policy
    (``valora.orchestrator.POLICIES``: fcfs, valora, slora, punica, dlora; ``policy_options`` are
    its keyword options). ``enforce_eager`` turns CUDA graphs off.

    LoRA: ``lora_modules`` {name: PEFT directory} and/or ``num_dummy_adapters`` random adapters
    (named lora0, lora1 ..., ranks cycling ``dummy_ranks``); ``enable_lora=True`` starts with none
    (load later with ``load_lora``). ``max_loras`` sizes the GPU pool (adapters of
    ``max_lora_rank``; more fit at lower ranks), ``max_cpu_loras`` the host cache,
    ``lora_backend`` overrides the policy's kernels, ``lora_towers`` picks language/vision.

    ``quantization`` ("w4a16" | "w8a16") holds the language model's linears quantized;
    ``quant_merge`` ("auto" | "on" | "off") gives merged mode dense overlays on such a base
    (``valora.adapters.merge``; auto: where they take at most half the KV-cache memory)."""

    def __init__(
        self,
        model: str = "tiny",
        dtype: str | torch.dtype = "auto",
        device: str | None = None,
        num_token: int | None = None,
        enable_prefix_caching: bool = True,
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        max_model_len: int = 32768,
        enable_chunked_prefill: bool = True,
        gpu_memory_utilization: float = 0.85,
        lora_modules: dict[str, str] | None = None,
        max_lora_rank: int = 64,
        seed: int = 0,
        enforce_eager: bool = False,
        scheduler: str = "fcfs",
        enable_lora: bool | None = None,
        num_dummy_adapters: int = 0,
        dummy_ranks: Sequence[int] = (8, 16, 32, 64),
        max_loras: int = 8,
        max_cpu_loras: int = 64,
        lora_backend: str | None = None,
        lora_towers: Sequence[str] = ("language", "vision"),
        allow_pickle: bool = False,
        policy_options: dict | None = None,
        quantization: str = "none",
        quant_merge: str = "auto",
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        if enable_lora is None:
            enable_lora = bool(lora_modules) or num_dummy_adapters > 0
        lora_config = None
        if enable_lora:
            lora_config = LoRAConfig(max_loras, max_lora_rank, max_cpu_loras, lora_backend,
                                     tuple(lora_towers), allow_pickle)  # fmt: skip
        scheduler_config = SchedulerConfig(max_num_seqs, max_num_batched_tokens, max_model_len,
                                           enable_chunked_prefill, scheduler)  # fmt: skip
        self.engine = LLMEngine(
            EngineConfig(
                model,
                dtype,
                device,
                num_token,
                gpu_memory_utilization,
                block_size,
                enable_prefix_caching,
                scheduler_config,
                seed,
                enforce_eager,
                lora=lora_config,
                policy_options=tuple((policy_options or {}).items()),
                quantization=quantization,
                quant_merge=quant_merge,
            )  # fmt: skip
        )
        for name, path in (lora_modules or {}).items():
            self.load_lora(name, path)
        for i, rank in enumerate(dummy_ranks_for(num_dummy_adapters, dummy_ranks)):
            self.engine.lora.add_dummy(f"lora{i}", rank, seed=seed + 1 + i)
        self._next_id = 0

    def load_lora(self, name: str, path: str) -> int:
        """Load (or reload: a new version) a PEFT adapter under ``name``; returns its version."""
        return self._lora().add_adapter(name, path)

    def unload_lora(self, name: str) -> None:
        self._lora().remove_adapter(name)

    def _lora(self):
        if self.engine.lora is None:
            raise ValueError("this LLM was built without LoRA (pass enable_lora=True)")
        return self.engine.lora

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora: str | Sequence[str | None] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One ``RequestOutput`` per prompt, in prompt order."""
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        params = [
            replace(p, output_kind=RequestOutputKind.FINAL_ONLY)  # no per-step outputs
            for p in _per_prompt(sampling_params or SamplingParams(), len(prompts))
        ]
        adapters = _per_prompt(lora, len(prompts))
        ids = []
        for prompt, p, adapter in zip(prompts, params, adapters):
            ids.append(str(self._next_id))
            self._next_id += 1
            self.engine.add_request(ids[-1], prompt, p, adapter)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        images: list | None = None,
        use_tqdm: bool = True,
        lora: str | Sequence[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Applies the chat template; ``images`` (one list per conversation) fill its image
        parts in order."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        images = images or [[] for _ in conversations]
        prompts = [
            {"prompt": self.tokenizer.apply_chat_template(c), "multi_modal_data": {"image": im}}
            for c, im in zip(conversations, images)
        ]
        return self.generate(prompts, sampling_params, lora, use_tqdm=use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        with tqdm(total=len(ids), desc="generating", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        return [done[i] for i in ids]


def _per_prompt(value, n: int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values (one per prompt), got {len(value)}")
        return list(value)
    return [value] * n
