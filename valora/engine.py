"""LLMEngine: ``add_request`` / ``abort`` / ``step`` over the scheduler and the model runner.

One step: the scheduler picks the batch, the runner computes it and samples, the scheduler
advances; then the output processor records each request's token, detokenizes it, checks the
stop rules and builds the step's outputs (``valora.output_processor``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass

import torch

from valora.adapters.manager import LoRAConfig, LoRAManager, lora_targets
from valora.adapters.merge import overlay_bytes
from valora.block_manager import BlockManager
from valora.config import ModelConfig, is_model_setting
from valora.cuda_graphs import DecodeGraphs, GraphForward, capture_sizes
from valora.engine_stats import EngineStats
from valora.forward import EagerForward
from valora.inputs import ProcessedPrompt, PromptType, build_request, process_prompt
from valora.layers.paged_attention import KVCache, TorchPagedAttention
from valora.model_runner import ModelRunner
from valora.orchestrator import make_policy
from valora.orchestrator.base import AdapterKey, Plan
from valora.output_processor import OutputProcessor, SampledToken
from valora.request import Request, RequestOutput, RequestStatus
from valora.sampling_params import SamplingParams
from valora.scheduler import OpenGate, Scheduler, SchedulerConfig, SchedulerOutput
from valora.tokenizer import Tokenizer
from valora.weights import load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model: str = "tiny"  # a model setting or a checkpoint directory
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    num_token: int | None = None  # KV budget in tokens; None: from gpu_memory_utilization
    gpu_memory_utilization: float = 0.85
    block_size: int = 16
    enable_prefix_caching: bool = True
    scheduler: SchedulerConfig = SchedulerConfig()
    seed: int = 0  # dummy-weight seed
    enforce_eager: bool = False  # True: no CUDA graphs for decode steps
    lora: LoRAConfig | None = None  # None: no LoRA (no pool, no LoRA layers)
    quantization: str = "none"  # "w4a16" | "w8a16": the language model's linears quantized
    # merged mode on a quantized base (dense overlays of the LoRA targets, valora.adapters.merge):
    # "auto" where they take at most half the memory left for the KV cache, "on" (an error
    # if they do not fit), "off"
    quant_merge: str = "auto"
    policy_options: tuple[tuple[str, object], ...] = ()  # keyword options of the policy

    def __post_init__(self) -> None:
        if self.quant_merge not in ("auto", "on", "off"):
            raise ValueError(f"quant_merge must be auto, on or off, got {self.quant_merge!r}")


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model = load_model(config.model, config.dtype, config.device, seed=config.seed)
        self.model_config: ModelConfig = self.model.cfg
        self._quantize()
        is_dir = not is_model_setting(config.model)
        self.tokenizer = Tokenizer.load(config.model if is_dir else None)
        self.policy = make_policy(config.scheduler.policy, **dict(config.policy_options))
        self.can_merge = False  # set by _lora_manager
        self.lora = self._lora_manager()  # before the KV cache: it takes GPU memory
        num_blocks = self._num_kv_blocks()
        cfg = self.model_config
        kv_cache = KVCache(cfg.num_hidden_layers, num_blocks, config.block_size,
                           cfg.num_key_value_heads, cfg.head_dim, config.dtype,
                           config.device)  # fmt: skip
        self.model.attn_backend = _attention_backend(kv_cache, config.device)
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching)  # fmt: skip
        max_len = min(config.scheduler.max_model_len, cfg.max_position_embeddings)
        sched_cfg = dataclasses.replace(config.scheduler, max_model_len=max_len)
        self.scheduler = Scheduler(sched_cfg, self.block_manager, self.policy,
                                   self.lora or OpenGate())  # fmt: skip
        overlays = self.lora is not None and self.lora.merger is not None and (
            self.lora.merger.has_overlays)  # fmt: skip
        self.policy.bind(num_blocks * config.block_size, overlay_merges=overlays)
        # one vision pass encodes at most a step's token budget of image tokens
        self.runner = ModelRunner(self.model, kv_cache, forward=self._forward_strategy(kv_cache),
                                  lora=self.lora,
                                  encoder_budget=sched_cfg.max_num_batched_tokens)  # fmt: skip
        self.outputs = OutputProcessor(self.tokenizer, max_len)
        self._requests: dict[str, Request] = {}  # unfinished requests by id
        self.stats = EngineStats()

    def _quantize(self) -> None:
        """Weight-only quantization of the LM linears (RTN from the loaded weights: the dummy
        quantized weights of the named settings)."""
        if self.config.quantization == "none":
            return
        from valora.quant.convert import quantize_model_rtn

        quantize_model_rtn(self.model, self.config.quantization)
        if self.config.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _lora_manager(self) -> LoRAManager | None:
        lora = self.config.lora
        if lora is None:
            return None
        backend = lora.backend or self.policy.backend
        self.can_merge = self.policy.can_merge and self._overlays_fit(lora)
        return LoRAManager(self.model, lora, backend, self.can_merge, self.config.dtype,
                           self.config.device)  # fmt: skip

    def _overlays_fit(self, lora: LoRAConfig) -> bool:
        """Whether merged mode gets its memory: free on a dense base (the pristine copies are
        the policy's cost); on a quantized base the dense overlays must fit (``quant_merge``).
        Without them every step runs unmerged: the policy's merge plans are not carried out."""
        mode = self.config.quant_merge
        if self.config.quantization == "none":
            return True
        if mode == "off":
            return False
        need = overlay_bytes(self.model, lora_targets(self.model.cfg, lora))
        if not self.config.device.startswith("cuda"):
            return True
        usable = self._usable_bytes()
        if self.config.num_token is not None:
            usable -= self.config.num_token * self._kv_bytes_per_token()
            fits = need <= usable
        else:
            fits = need <= usable / 2
        if mode == "on" and not fits:
            raise ValueError(f"quant_merge='on': the merge overlays need {need / 2**30:.1f} GiB, "
                             f"{max(usable, 0) / 2**30:.1f} GiB is left")  # fmt: skip
        return fits

    def _forward_strategy(self, kv_cache: KVCache):
        """Captured decode graphs on CUDA (unless enforce_eager, or the attention backend reads
        host-side lengths, or the LoRA backend must re-prepare its pool views after adapter
        loads), eager forwards otherwise."""
        runtime = None if self.lora is None else self.lora.runtime
        eager = EagerForward(self.model, runtime)
        graph_safe = getattr(self.model.attn_backend, "graph_safe", False)
        if runtime is not None:
            graph_safe = graph_safe and runtime.backend.graph_safe and runtime.static_prepare
        if not self.config.device.startswith("cuda") or self.config.enforce_eager or not graph_safe:
            return eager
        max_seqs = self.scheduler.config.max_num_seqs
        merger = None if self.lora is None else self.lora.merger
        overlays = merger is not None and merger.has_overlays
        graphs = DecodeGraphs(self.model, kv_cache, max_seqs, self.scheduler.config.max_model_len,
                              runtime, ("none", *self._lora_variants()),
                              merger.overlays_active if overlays else None)  # fmt: skip
        graphs.capture()
        return GraphForward(graphs, eager)

    def _lora_variants(self) -> tuple[str, ...]:
        """Decode-graph variants with LoRA rows or merged weights (besides "none")."""
        if self.lora is None:
            return ()
        if not self.can_merge:
            return ("unmerged",)
        overlays = self.lora.merger.has_overlays  # merged steps compute on other weights
        return ("unmerged", "mixture", "merged") if overlays else ("unmerged", "mixture")

    def _num_kv_blocks(self) -> int:
        cfg, c = self.model_config, self.config
        if c.num_token is not None:
            return max(1, c.num_token // c.block_size)
        if not c.device.startswith("cuda"):
            return 16384 // c.block_size
        usable = self._usable_bytes()
        if c.lora is not None and not c.enforce_eager:  # graph logits of the LoRA variants
            variants = len(self._lora_variants())
            usable -= variants * sum(capture_sizes(c.scheduler.max_num_seqs)) * cfg.vocab_size * 4
        per_token = self._kv_bytes_per_token()
        return max(1, int(usable // (per_token * c.block_size)) - 1)  # - the scratch block

    def _usable_bytes(self) -> float:
        """GPU memory left for the KV cache now: the utilization share, less what is in use and
        1 GiB headroom."""
        free, total = torch.cuda.mem_get_info()
        return total * self.config.gpu_memory_utilization - (total - free) - (1 << 30)

    def _kv_bytes_per_token(self) -> int:
        cfg = self.model_config
        return KVCache.bytes_per_token(cfg.num_hidden_layers, cfg.num_key_value_heads,
                                       cfg.head_dim, self.config.dtype)  # fmt: skip

    # ---- what the engine serves -----------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        """The context limit: prompt plus output tokens of one request."""
        return self.scheduler.config.max_model_len

    def adapters(self) -> dict[str, str]:
        """Loaded adapters (newest versions): name -> where it came from (path or dummy)."""
        if self.lora is None:
            return {}
        registry = self.lora.registry
        latest = dict(registry.latest)  # one atomic copy: servers read this off the engine thread
        entries = {name: registry.entries.get((name, version)) for name, version in latest.items()}
        return {name: e.description for name, e in sorted(entries.items()) if e is not None}

    # ---- requests -------------------------------------------------------------------------
    def process_prompt(self, prompt: PromptType) -> ProcessedPrompt:
        """Tokenize and process the images of ``prompt`` (no engine state: thread-safe, so a
        server runs it off the engine thread and hands the result to ``add_request``)."""
        return process_prompt(prompt, self.tokenizer, self.model_config)

    def add_request(
        self,
        request_id: str,
        prompt: PromptType | ProcessedPrompt,
        params: SamplingParams | None = None,
        adapter: str | None = None,
    ) -> Request:
        """``adapter`` names a loaded adapter (its newest version); None: the base model.
        Everything a step will use is checked here (ValueError), so a bad request is refused
        before it can reach a step: the prompt fits the context and the KV cache, ``max_tokens``
        None becomes the context left after the prompt (as vLLM), and the adapter's host copy
        is present and verified (``AdapterUnavailable`` if its files changed or vanished)."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = params or SamplingParams()
        key = self._resolve_adapter(adapter)
        request = build_request(request_id, prompt, params, self.tokenizer, self.model_config,
                                key)  # fmt: skip
        max_len = self.scheduler.config.max_model_len
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if request.num_prompt_tokens >= min(max_len, capacity):
            raise ValueError(
                f"prompt of {request.num_prompt_tokens} tokens does not fit: the context limit "
                f"is {max_len} tokens and the KV cache holds {capacity}"
            )
        vocab = self.model_config.vocab_size
        if any(t >= vocab for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must lie in [0, {vocab})")
        if params.max_tokens is None:  # validated again: min_tokens must fit what is left
            request.sampling_params = dataclasses.replace(
                params, max_tokens=max_len - request.num_prompt_tokens
            )
        if key is not None:
            self.lora.registry.weights(key)  # host copy held while the request lives
        self.scheduler.add_request(request)
        self._requests[request_id] = request
        self.outputs.add(request)
        if key is not None:
            self.lora.registry.ref(key)
        return request

    def _resolve_adapter(self, name: str | None) -> tuple[str, int] | None:
        if name is None:
            return None
        if self.lora is None:
            raise ValueError(f"unknown adapter {name!r}: this engine was started without LoRA")
        return self.lora.resolve(name)

    def abort(self, request_id: str) -> bool:
        request = self._requests.get(request_id)
        if request is None or request.is_finished:
            return False
        try:
            self._finish(request, RequestStatus.FINISHED_ABORTED)
        finally:
            self.outputs.discard(request)
        return True

    def abort_all(self) -> list[str]:
        """Abort every unfinished request (e.g. after a step failed for reasons no single
        request explains); returns their ids."""
        ids = list(self._requests)
        for request_id in ids:
            try:
                self.abort(request_id)
            except Exception:  # the others must still be released
                log.exception("aborting request %s failed", request_id)
        return ids

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def resource_usage(self) -> dict[str, int]:
        """What unfinished requests hold: with none left, every count but the idle cached
        blocks is 0 (a soak's leak check)."""
        bm = self.block_manager
        pins = 0 if self.lora is None else self.lora.num_request_pins()
        return {"num_unfinished": len(self._requests),
                "num_waiting": len(self.scheduler.waiting),
                "num_running": len(self.scheduler.running),
                "kv_blocks_total": bm.num_blocks,
                "kv_blocks_in_use": bm.num_blocks - bm.num_free_blocks,
                "adapter_pins": pins}  # fmt: skip

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One step. A request whose computation raises fails alone (an output with ``error``
        set; its blocks and pin freed); the others of its batch go on (``ModelRunner.
        execute_isolating`` finds it by running the batch's requests one at a time)."""
        sched = self._schedule()
        if sched.is_empty:
            return []
        start = time.perf_counter()
        sampled, failed = self.runner.execute_isolating(sched)
        if not failed:  # an isolated step's times say nothing about the batch
            record = self.runner.step_record(time.perf_counter() - start)
            self.policy.observe(record)
            self.stats.record_step(record)
        outputs = [self._fail(request, exc) for request, exc in failed]
        ready = self.scheduler.update(sched.without([r for r, _ in failed]))
        for request in ready:
            try:
                out = self._append(request, sampled[request.request_id])
            except Exception as exc:  # detokenizing or a stop rule: this request alone
                out = self._fail(request, exc)
            if out is not None:
                outputs.append(out)
        return outputs

    def _schedule(self) -> SchedulerOutput:
        """The policy's plan (switching the merged adapter if it changes and fits), then the
        batch. A plan that holds every runnable request is dropped for this step, and a merged
        adapter whose pin keeps every waiting request out of the pool is unmerged, so nothing
        stalls. A policy that raises is logged and replaced by "keep the mode, hold nobody"."""
        sched, lora = self.scheduler, self.lora
        merged = lora and lora.merged
        try:
            plan = self.policy.plan(sched.waiting, sched.running, merged, time.monotonic())
        except Exception:
            log.exception("the %s policy failed to plan; keeping the mode", self.policy.name)
            plan = Plan(merged=merged)
        if lora is not None and lora.merger is not None and plan.merged != lora.merged:
            self.switch_merged(plan.merged)
        out = sched.schedule(plan.hold)
        if out.is_empty and plan.hold is not None and sched.num_unfinished:
            out = sched.schedule()
        if out.is_empty and sched.num_unfinished and lora is not None and lora.merged:
            self.switch_merged(None)  # its pin may be what keeps the pool full
            out = sched.schedule()
        if lora is not None:
            lora.prefetch(list(itertools.islice(sched.waiting, 4)))
        return out

    def switch_merged(self, key: AdapterKey | None) -> None:
        """Hold ``key`` merged (None: unmerge): the switch, told to the policy and counted. A
        switch the adapter pool has no room for is not made, and one that fails leaves nothing
        merged; either way the step's rows run unmerged and nobody fails."""
        try:
            seconds = self.lora.switch(key)
        except Exception:  # the merger is back on the base weights: the step runs unmerged
            log.exception("switching the merged adapter to %s failed; running unmerged", key)
            return
        if seconds is None:
            return
        self.policy.observe_switch(seconds)
        self.stats.record_switch(seconds)

    def _append(self, request: Request, token: SampledToken) -> RequestOutput | None:
        request.first_token_time = request.first_token_time or time.monotonic()
        status = self.outputs.append(request, token)
        if status is not None:
            self._finish(request, status)
        return self.outputs.output(request)

    def _fail(self, request: Request, exc: Exception) -> RequestOutput:
        """End one request whose step raised: its blocks and pins freed, an error output."""
        log.error("request %s failed in a step", request.request_id, exc_info=exc)
        self._finish(request, RequestStatus.FINISHED_ABORTED, flush=False)
        message = f"internal error while computing this request ({type(exc).__name__})"
        return self.outputs.error_output(request, message)

    def _finish(self, request: Request, status: RequestStatus, flush: bool = True) -> None:
        """End a request once (a second call, from a failure path, does nothing): its blocks,
        pool pin and registry ref released even if one release raises."""
        if self._requests.pop(request.request_id, None) is None:
            return
        request.finish_time = time.monotonic()
        try:
            self.scheduler.finish(request, status)
            self.runner.release(request.request_id)
        finally:
            if request.adapter_id is not None:
                self.lora.registry.unref((request.adapter_id, request.adapter_version))
        if flush:
            self.outputs.finish(request)


def _attention_backend(kv_cache: KVCache, device: str):
    """Triton kernels on the GPU, the torch implementation elsewhere (chosen once)."""
    if device.startswith("cuda"):
        try:
            from valora.layers.triton_attention import TritonPagedAttention
        except ImportError:
            return TorchPagedAttention(kv_cache)
        return TritonPagedAttention(kv_cache)
    return TorchPagedAttention(kv_cache)
