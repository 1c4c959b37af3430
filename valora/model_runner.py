"""Model runner: turns a ``SchedulerOutput`` into one forward pass and sampled tokens.

It owns the model, the paged KV cache, the encoder cache (image embeddings of requests still in
prefill) and the per-request sampling generators. ``prepare`` builds the flattened batch: for
each scheduled request, tokens ``[num_computed, num_computed + n)`` with their M-RoPE positions
(prompt positions, or ``index + rope_delta`` past the prompt), their cache slots, and the image
embedding rows that fall in the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from valora.adapters.runtime import lora_mode
from valora.forward import EagerForward, StepBatch
from valora.layers.paged_attention import KVCache, padded_block_tables, slot_mapping
from valora.layers.sampler import Sampler, SamplingBatch
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration
from valora.orchestrator import StepRecord
from valora.output_processor import SampledToken
from valora.request import Classification, Request
from valora.sampling_params import SamplingParams
from valora.scheduler import SchedulerOutput

log = logging.getLogger(__name__)


def token_positions(request: Request, start: int, end: int) -> np.ndarray:
    """M-RoPE positions [3, end - start] of the request's tokens [start, end)."""
    prompt_len = request.num_prompt_tokens
    if start >= prompt_len:  # generated tokens only (every decode step): text positions
        return np.broadcast_to(np.arange(start, end) + request.rope_delta, (3, end - start))
    parts = []
    if start < prompt_len:
        parts.append(request.mrope_positions[:, start : min(end, prompt_len)])
    if end > prompt_len:
        first = max(start, prompt_len)
        parts.append(np.broadcast_to(np.arange(first, end) + request.rope_delta, (3, end - first)))
    return np.concatenate(parts, axis=1)


def image_rows_before(request: Request, position: int) -> int:
    """How many image-pad tokens of the prompt come before token ``position``."""
    return sum(min(max(position - s.start, 0), s.num_tokens) for s in request.image_spans)


def encoder_groups(requests: list[Request], budget: int) -> list[list[Request]]:
    """Consecutive groups of at most ``budget`` image tokens (a request over it alone)."""
    groups, tokens = [], 0
    for request in requests:
        n = request.num_image_tokens
        if not groups or tokens + n > budget:
            groups.append([])
            tokens = 0
        groups[-1].append(request)
        tokens += n
    return groups


class ModelRunner:
    """``forward`` is the forward strategy (``EagerForward``, or ``GraphForward`` on CUDA),
    chosen once by the engine."""

    def __init__(
        self,
        model: Qwen2VLForConditionalGeneration,
        kv_cache: KVCache,
        sampler: Sampler | None = None,
        forward: Callable[[StepBatch], torch.Tensor | None] | None = None,
        lora=None,
        encoder_budget: int = 16384,
    ) -> None:
        self.model = model
        self.lora = lora  # valora.adapters.manager.LoRAManager, or None (no LoRA)
        # image tokens one vision pass may encode (a request with more gets a pass of its own)
        self.encoder_budget = encoder_budget
        self.kv_cache = kv_cache
        self.sampler = sampler or Sampler()
        self.forward = forward or EagerForward(model)
        self.device = model.device
        self._encoder_cache: dict[str, torch.Tensor] = {}  # request id -> [rows, hidden]
        self._generators: dict[str, torch.Generator] = {}

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> dict[str, SampledToken | Classification]:
        """One step -> a sampled token per request whose every token is now computed, or, for a
        classify request, its task head's ``Classification``."""
        batch = self.last_batch = self.prepare(sched)
        out = self.forward(batch)
        results = {} if out.logits is None else self._sample(out.logits, batch.sample_requests)
        if out.head_hidden is not None:
            results.update(self._classify(out.head_hidden, batch.head_requests))
        return results

    def _classify(self, hidden: torch.Tensor, requests: list[Request]) -> dict[str, Classification]:
        """Each request's last prompt hidden state (a row of ``hidden`` [N, hidden]) through its
        adapter's task head: one head call per adapter version, one device->host copy each."""
        rows_of: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            rows_of.setdefault((request.adapter_id, request.adapter_version), []).append(i)
        results = {}
        for key, rows in rows_of.items():
            head = self.lora.task_head(key)
            labels = list(head.labels)
            for i, probs in zip(rows, head(hidden[rows]).tolist()):
                label = labels[max(range(len(probs)), key=probs.__getitem__)]
                results[requests[i].request_id] = Classification(label, probs, list(labels))
        return results

    def execute_isolating(
        self, sched: SchedulerOutput
    ) -> tuple[dict[str, SampledToken], list[tuple[Request, Exception]]]:
        """``execute``, and if the batch raises, each of its requests again on its own: ->
        (sampled tokens of the requests that ran, (request, exception) of those that raise
        alone). Re-running is safe: a failed step advanced no request (KV rows are rewritten
        at the same slots, the encoder cache re-encodes what it dropped). Raises when the engine
        itself is broken (every request failed and ``check_health`` fails too, or a CUDA device
        is left in an error state): then the step, not a request, has failed."""
        try:
            return self.execute(sched), []
        except Exception:
            log.exception(
                "a step of %d requests raised; running them one at a time", len(sched.requests)
            )
        sampled, failed = {}, []
        for request, num in zip(sched.requests, sched.num_new_tokens):
            try:
                sampled.update(self.execute(SchedulerOutput([request], [num])))
            except Exception as exc:
                failed.append((request, exc))
        if len(failed) == len(sched.requests):
            self.check_health()  # every one failed: is it them, or the engine?
        elif failed and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # a sticky device error raises here
        return sampled, failed

    def check_health(self) -> None:
        """Compute one plain token (base model, no image, on the KV cache's scratch block that
        no sequence owns); raises if even that fails: then the engine is broken, not a
        request."""
        probe = Request(
            "__health_probe__",
            [0],
            SamplingParams(temperature=0, max_tokens=1),
            mrope_positions=np.zeros((3, 1), dtype=np.int64),
            block_table=[self.kv_cache.scratch_block],
        )
        try:
            self.execute(SchedulerOutput([probe], [1]))
        finally:
            self.release(probe.request_id)

    def prepare(self, sched: SchedulerOutput) -> StepBatch:
        self._encode_images(sched)
        num_tokens = sched.num_batched_tokens
        ids: list[int] = []
        positions = np.empty((3, num_tokens), dtype=np.int64)
        context_lens, image_rows, embeds, sample_rows, sample_requests = [], [], [], [], []
        head_rows, head_requests = [], []
        row = 0
        for request, num in zip(sched.requests, sched.num_new_tokens):
            start, end = request.num_computed_tokens, request.num_computed_tokens + num
            context_lens.append(end)
            ids.extend(request.token_ids(start, end))
            positions[:, row : row + num] = token_positions(request, start, end)
            if start < request.num_prompt_tokens:
                self._add_image_rows(request, start, end, row, image_rows, embeds)
            row += num
            if end == request.num_tokens and request.classify:
                head_rows.append(row - 1)
                head_requests.append(request)
            elif end == request.num_tokens:
                sample_rows.append(row - 1)
                sample_requests.append(request)
            if end >= request.num_prompt_tokens:
                self._encoder_cache.pop(request.request_id, None)
        tables = [r.block_table for r in sched.requests]
        query_lens = list(sched.num_new_tokens)
        lora = self.lora
        seq_slots = None if lora is None else [lora.slot_of(r) for r in sched.requests]
        return StepBatch(
            input_ids=np.asarray(ids, dtype=np.int64),
            positions=positions,
            query_lens=query_lens,
            context_lens=context_lens,
            slot_mapping=slot_mapping(query_lens, context_lens, tables, self.kv_cache.block_size),
            block_tables=padded_block_tables(tables),
            image_embeds=torch.cat(embeds) if embeds else None,
            image_rows=image_rows,
            sample_rows=sample_rows,
            sample_requests=sample_requests,
            head_rows=head_rows,
            head_requests=head_requests,
            seq_slots=seq_slots,
            merged_slot=None if lora is None else lora.merged_slot,
        )

    def step_record(self, seconds: float) -> StepRecord:
        """The last executed step as the orchestration policy's cost model sees it."""
        batch = self.last_batch
        num_tokens = len(batch.input_ids)
        if batch.seq_slots is None:
            return StepRecord("none", num_tokens, 0, 0, seconds)
        m = batch.merged_slot
        mode = lora_mode(batch.seq_slots, m)
        own = [(s, n) for s, n in zip(batch.seq_slots, batch.query_lens) if s >= 0 and s != m]
        corr_rows = (
            0 if m is None else sum(n for s, n in zip(batch.seq_slots, batch.query_lens) if s != m)
        )
        segments = len(own) + (corr_rows > 0)
        return StepRecord(mode, num_tokens, sum(n for _, n in own) + corr_rows, segments, seconds)

    def _add_image_rows(self, request, start, end, row, image_rows, embeds) -> None:
        """Append the image embeddings of prompt tokens [start, end) and their batch rows."""
        first, last = image_rows_before(request, start), image_rows_before(request, end)
        if last > first:
            embeds.append(self._image_embeds(request)[first:last])
            image_rows.extend(row + o for o in self._image_offsets(request, start, end))

    @staticmethod
    def _image_offsets(request: Request, start: int, end: int) -> list[int]:
        """Offsets within the chunk [start, end) of the tokens that are image pads."""
        offsets = []
        for span in request.image_spans:
            lo, hi = max(span.start, start), min(span.start + span.num_tokens, end)
            offsets.extend(range(lo - start, hi - start))
        return offsets

    def _image_embeds(self, request: Request) -> torch.Tensor:
        """All image embeddings of the request, in prompt order (``_encode_images`` made them)."""
        return self._encoder_cache[request.request_id]

    def _encode_images(self, sched: SchedulerOutput) -> None:
        """Encode the images of every request whose chunk reaches an image row and that has no
        embeddings yet: all of them in one vision pass per ``encoder_budget`` image tokens, so
        the tower's per-op launch cost is paid per step, not per request."""
        todo = [
            r
            for r, n in zip(sched.requests, sched.num_new_tokens)
            if r.request_id not in self._encoder_cache
            and r.images
            and image_rows_before(r, r.num_computed_tokens + n)
            > image_rows_before(r, r.num_computed_tokens)
        ]
        for group in encoder_groups(todo, self.encoder_budget):
            images = [im for r in group for im in r.images]
            pixels = torch.cat([im.pixel_values for im in images])
            if self.lora is not None:  # the vision tower's LoRA: each request's own adapter
                patches = [sum(im.pixel_values.shape[0] for im in r.images) for r in group]
                self.lora.set_vision_adapters(group, patches)
            embeds = self.model.encode_images(pixels, [im.grid_thw for im in images])
            for request, rows in zip(group, embeds.split([r.num_image_tokens for r in group])):
                self._encoder_cache[request.request_id] = rows

    def _sample(self, logits: torch.Tensor, requests: list[Request]) -> dict[str, SampledToken]:
        batch = SamplingBatch.build(
            [r.sampling_params for r in requests],
            [r.prompt_token_ids for r in requests],
            [r.output_token_ids for r in requests],
            [self._generator(r) for r in requests],
            requests[0].eos_token_ids if requests else (),
            logits.shape[-1],
            self.device,
        )
        out = self.sampler(logits, batch)
        # one device->host copy for both (token ids < 2^53 are exact in float64)
        packed = torch.cat((out.token_ids.double(), out.logprobs.double())).tolist()
        token_ids, logprobs = [int(t) for t in packed[: len(requests)]], packed[len(requests) :]
        top_ids = None if out.top_logprob_ids is None else out.top_logprob_ids.tolist()
        top_vals = None if out.top_logprobs is None else out.top_logprobs.tolist()
        results = {}
        for i, request in enumerate(requests):
            k = request.sampling_params.logprobs
            top = None if not k or top_ids is None else dict(zip(top_ids[i][:k], top_vals[i][:k]))
            results[request.request_id] = SampledToken(token_ids[i], logprobs[i], top)
        return results

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        if request.request_id not in self._generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self._generators[request.request_id] = generator
        return self._generators[request.request_id]

    def release(self, request_id: str) -> None:
        """Forget a finished or aborted request's encoder-cache entry and generator."""
        self._encoder_cache.pop(request_id, None)
        self._generators.pop(request_id, None)
