"""Offline API mirroring vLLM's ``LLM``: ``LLM(model=...).generate(prompts, sampling_params)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from valora.adapters.peft_loader import dummy_ranks as dummy_ranks_for
from valora.cli_fields import split_kwargs
from valora.config import EngineConfig, LoRAConfig, SchedulerConfig
from valora.engine import LLMEngine, build_engine
from valora.engine.builder import TORCH_DTYPES
from valora.inputs import PromptType
from valora.request import RequestOutput
from valora.sampling_params import RequestOutputKind, SamplingParams

# older keyword names -> the config field they set
_ALIASES = {"scheduler": "policy", "lora_backend": "backend", "lora_towers": "towers"}
_DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}  # torch dtype -> config


def engine_config(model: str, enable_lora: bool, **kwargs: Any) -> EngineConfig:
    """``EngineConfig`` from keyword arguments, each routed to the config that has a field of
    its name (``EngineConfig``, ``SchedulerConfig``, ``LoRAConfig``); TypeError for others."""
    kwargs = {_ALIASES.get(k, k): v for k, v in kwargs.items()}
    if isinstance(kwargs.get("dtype"), torch.dtype):
        kwargs["dtype"] = _DTYPE_NAMES[kwargs["dtype"]]
    engine_kw, sched_kw, lora_kw = split_kwargs(kwargs, EngineConfig, SchedulerConfig, LoRAConfig)
    if lora_kw and not enable_lora:
        raise ValueError(
            f"LoRA options {sorted(lora_kw)} given, but LoRA is off "
            "(pass enable_lora=True, lora_modules or num_dummy_adapters)"
        )
    lora = LoRAConfig(**lora_kw) if enable_lora else None
    return EngineConfig(model=model, scheduler=SchedulerConfig(**sched_kw), lora=lora, **engine_kw)


class LLM:
    """``model`` is a model setting (``tiny``, ``qwen2-vl-2b``, ``qwen2-vl-7b``: dummy weights)
    or a checkpoint directory. Every other keyword is a field of ``EngineConfig``,
    ``SchedulerConfig`` or ``LoRAConfig`` (``valora.config``: e.g. ``num_token``,
    ``max_model_len``, ``policy`` (alias ``scheduler``), ``policy_options``, ``max_loras``,
    ``backend`` (alias ``lora_backend``), ``quantization``).

    LoRA: ``lora_modules`` {name: PEFT directory} and/or ``num_dummy_adapters`` random adapters
    (named lora0, lora1 ..., ranks cycling ``dummy_ranks``); ``enable_lora=True`` starts with none
    (load later with ``load_lora``)."""

    def __init__(
        self,
        model: str = "tiny",
        *,
        lora_modules: dict[str, str] | None = None,
        enable_lora: bool | None = None,
        num_dummy_adapters: int = 0,
        dummy_ranks: Sequence[int] = (8, 16, 32, 64),
        **kwargs: Any,
    ) -> None:
        if enable_lora is None:
            enable_lora = bool(lora_modules) or num_dummy_adapters > 0
        config = engine_config(model, enable_lora, **kwargs)
        self.engine: LLMEngine = build_engine(config)
        for name, path in (lora_modules or {}).items():
            self.load_lora(name, path)
        seed = config.seed
        for i, rank in enumerate(dummy_ranks_for(num_dummy_adapters, dummy_ranks)):
            self.engine.load_dummy_adapter(f"lora{i}", rank, seed=seed + 1 + i)
        self._next_id = 0

    def load_lora(self, name: str, path: str) -> int:
        """Load (or reload: a new version) a PEFT adapter under ``name``; returns its version."""
        return self.engine.load_adapter(name, path)

    def unload_lora(self, name: str) -> None:
        self.engine.unload_adapter(name)

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

    def classify(
        self,
        prompts: PromptType | Sequence[PromptType],
        adapter: str | Sequence[str],
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One prefill pass per prompt through ``adapter``'s task head (vLLM's ``classify``):
        each output's ``classification`` holds ``label``, ``probs`` and ``labels``. ValueError
        if an adapter has no task head."""
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        ids = []
        for prompt, name in zip(prompts, _per_prompt(adapter, len(prompts))):
            ids.append(str(self._next_id))
            self._next_id += 1
            self.engine.add_request(ids[-1], prompt, adapter=name, classify=True)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        images: list | None = None,
        use_tqdm: bool = True,
        lora: str | Sequence[str | None] | None = None,
        videos: list | None = None,
    ) -> list[RequestOutput]:
        """Applies the chat template; ``images`` and ``videos`` (one list per conversation) fill
        its image and video parts in order."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        images = images or [[] for _ in conversations]
        videos = videos or [[] for _ in conversations]
        prompts = [
            {
                "prompt": self.tokenizer.apply_chat_template(c),
                "multi_modal_data": {"image": im, "video": vid},
            }
            for c, im, vid in zip(conversations, images, videos)
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
