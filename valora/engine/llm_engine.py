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

from torch import nn

from valora.adapters.manager import LoRAManager
from valora.block_manager import BlockManager
from valora.config import EngineConfig, ModelConfig
from valora.engine.adapter_api import AdapterAPI
from valora.engine.stats import EngineSnapshot, EngineStats, take_snapshot
from valora.engine.weights_plan import WeightsPlan
from valora.inputs import ProcessedPrompt, PromptType, build_request, process_prompt
from valora.model_runner import ModelRunner
from valora.multimodal import ImageProcessorConfig
from valora.orchestrator.base import AdapterKey, Plan, Policy
from valora.output_processor import OutputProcessor, SampledToken
from valora.request import Classification, Request, RequestOutput, RequestStatus
from valora.sampling_params import SamplingParams
from valora.scheduler import Scheduler, SchedulerOutput
from valora.tokenizer import Tokenizer
from valora.video import VideoProcessorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineParts:
    """What ``valora.engine.builder.build_engine`` assembles (config resolved: concrete device
    and dtype)."""

    config: EngineConfig
    weights: WeightsPlan
    model: nn.Module
    tokenizer: Tokenizer
    policy: Policy
    lora: LoRAManager | None
    block_manager: BlockManager
    scheduler: Scheduler
    runner: ModelRunner
    outputs: OutputProcessor
    image_config: ImageProcessorConfig  # the checkpoint's processor settings + overrides
    video_config: VideoProcessorConfig


class LLMEngine(AdapterAPI):
    """The front door: requests (``add_request`` / ``abort`` / ``step``), adapters
    (``load_adapter`` / ``unload_adapter`` / ``adapters``), limits (``max_model_len``,
    ``kv_capacity_tokens``) and a frozen ``snapshot()``. Callers outside ``valora.engine`` use
    only these; the parts below are the engine's own.

    Invariant: every unfinished request is in ``_requests`` and the scheduler; it holds one ref
    on its adapter version, released exactly once when it finishes (stop, length, abort, error).
    """

    def __init__(self, parts: EngineParts) -> None:
        self.config = parts.config
        self.weights = parts.weights
        self.model = parts.model
        self.model_config: ModelConfig = parts.weights.model_config
        self.tokenizer = parts.tokenizer
        self.policy = parts.policy
        self.lora = parts.lora
        self.block_manager = parts.block_manager
        self.scheduler = parts.scheduler
        self.runner = parts.runner
        self.outputs = parts.outputs
        self.image_config = parts.image_config
        self.video_config = parts.video_config
        self._requests: dict[str, Request] = {}  # unfinished requests by id
        self.stats = EngineStats()

    # ---- what the engine serves -----------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        """The context limit: prompt plus output tokens of one request."""
        return self.scheduler.config.max_model_len

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache holds (all blocks)."""
        return self.block_manager.num_blocks * self.block_manager.block_size

    # ---- requests -------------------------------------------------------------------------
    def process_prompt(self, prompt: PromptType) -> ProcessedPrompt:
        """Tokenize and process the images and videos of ``prompt`` (no engine state:
        thread-safe, so a server runs it off the engine thread and hands the result to
        ``add_request``)."""
        return process_prompt(
            prompt, self.tokenizer, self.model_config, self.image_config, self.video_config
        )

    def add_request(
        self,
        request_id: str,
        prompt: PromptType | ProcessedPrompt,
        params: SamplingParams | None = None,
        adapter: str | None = None,
        classify: bool = False,
    ) -> Request:
        """``adapter`` names a loaded adapter (its newest version); None: the base model.
        ``classify``: the adapter's task head answers in one prefill pass (no token is sampled;
        ``params`` is ignored; the output carries a ``Classification``).
        Everything a step will use is checked here (ValueError), so a bad request is refused
        before it can reach a step: the prompt fits the context and the KV cache, ``max_tokens``
        None becomes the context left after the prompt (as vLLM), and the adapter's host copy
        is present and verified (``AdapterUnavailable`` if its files changed or vanished)."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = params or SamplingParams()
        key = self._resolve_adapter(adapter)
        if classify:
            self._check_task_head(adapter, key)
            params = SamplingParams(temperature=0.0, max_tokens=1)
        if not isinstance(prompt, ProcessedPrompt):
            prompt = self.process_prompt(prompt)
        request = build_request(request_id, prompt, params, self.tokenizer, self.model_config, key)
        request.classify = classify
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

    def snapshot(self) -> EngineSnapshot:
        """Queues, KV usage, adapter pool and step totals now (plain values: safe to read from
        another thread; a scrape may see a step half done, never a broken value)."""
        return take_snapshot(
            self.scheduler, self.block_manager, self.lora, len(self._requests), self.stats
        )

    def check_invariants(self) -> None:
        """For tests and debugging: the KV block bookkeeping is consistent (AssertionError)."""
        self.block_manager.check_invariants()

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
                result = sampled[request.request_id]
                if isinstance(result, Classification):
                    out = self._classified(request, result)
                else:
                    out = self._append(request, result)
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

    def _classified(self, request: Request, result: Classification) -> RequestOutput:
        """A classify request is done after its prefill: blocks freed now (the prefix cache
        keeps the full ones), the head's answer as its output."""
        request.first_token_time = time.monotonic()
        self._finish(request, RequestStatus.FINISHED_STOPPED, flush=False)
        return self.outputs.classification_output(request, result)

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
