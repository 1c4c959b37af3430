"""Model runner: turns a ``SchedulerOutput`` into one forward pass and sampled tokens.

It owns the model, the paged KV cache, the encoder cache (image embeddings of requests still in
prefill) and the per-request sampling generators. ``prepare`` builds the flattened batch: for
each scheduled request, tokens ``[num_computed, num_computed + n)`` with their M-RoPE positions
(prompt positions, or ``index + rope_delta`` past the prompt), their cache slots, and the image
embedding rows that fall in the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from valora.layers.paged_attention import KVCache, PagedAttentionMetadata
from valora.layers.sampler import Sampler, SamplingBatch
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration
from valora.request import Request
from valora.scheduler import SchedulerOutput


@dataclass
class SampledToken:
    token_id: int
    logprob: float
    top_logprobs: dict[int, float] | None


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [3, T]
    metadata: PagedAttentionMetadata
    image_embeds: torch.Tensor | None  # [num_image_rows, hidden]
    image_rows: torch.Tensor  # [num_image_rows] rows of the batch that take image embeddings
    sample_rows: list[int]  # last row of each request that samples this step
    sample_requests: list[Request]


def token_positions(request: Request, start: int, end: int) -> np.ndarray:
    """M-RoPE positions [3, end - start] of the request's tokens [start, end)."""
    prompt_len = request.num_prompt_tokens
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


class ModelRunner:
    def __init__(
        self,
        model: Qwen2VLForConditionalGeneration,
        kv_cache: KVCache,
        sampler: Sampler | None = None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler or Sampler()
        self.device = model.device
        self._encoder_cache: dict[str, torch.Tensor] = {}  # request id -> [rows, hidden]
        self._generators: dict[str, torch.Generator] = {}

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> dict[str, SampledToken]:
        batch = self.prepare(sched)
        hidden = self.model(
            batch.input_ids, batch.positions, batch.metadata, batch.image_embeds, batch.image_rows
        )
        if not batch.sample_rows:
            return {}
        logits = self.model.compute_logits(hidden[batch.sample_rows])
        return self._sample(logits, batch.sample_requests)

    def prepare(self, sched: SchedulerOutput) -> ForwardBatch:
        ids, positions, image_rows, embeds, sample_rows, sample_requests = [], [], [], [], [], []
        row = 0
        for request, num in zip(sched.requests, sched.num_new_tokens):
            start, end = request.num_computed_tokens, request.num_computed_tokens + num
            ids.extend(request.all_token_ids[start:end])
            positions.append(token_positions(request, start, end))
            first, last = image_rows_before(request, start), image_rows_before(request, end)
            if last > first:
                embeds.append(self._image_embeds(request)[first:last])
                image_rows.extend(row + o for o in self._image_offsets(request, start, end))
            row += num
            if end == request.num_tokens:
                sample_rows.append(row - 1)
                sample_requests.append(request)
            if end >= request.num_prompt_tokens:
                self._encoder_cache.pop(request.request_id, None)
        meta = PagedAttentionMetadata.build(
            list(sched.num_new_tokens),
            [r.num_computed_tokens + n for r, n in zip(sched.requests, sched.num_new_tokens)],
            [r.block_table for r in sched.requests],
            self.kv_cache.block_size,
            self.device,
        )
        return ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            positions=torch.from_numpy(np.concatenate(positions, axis=1)).to(self.device),
            metadata=meta,
            image_embeds=torch.cat(embeds) if embeds else None,
            image_rows=torch.tensor(image_rows, dtype=torch.long, device=self.device),
            sample_rows=sample_rows,
            sample_requests=sample_requests,
        )

    @staticmethod
    def _image_offsets(request: Request, start: int, end: int) -> list[int]:
        """Offsets within the chunk [start, end) of the tokens that are image pads."""
        offsets = []
        for span in request.image_spans:
            lo, hi = max(span.start, start), min(span.start + span.num_tokens, end)
            offsets.extend(range(lo - start, hi - start))
        return offsets

    def _image_embeds(self, request: Request) -> torch.Tensor:
        """All image embeddings of the request, in prompt order (encoded once per prefill)."""
        cached = self._encoder_cache.get(request.request_id)
        if cached is None:
            pixels = torch.cat([im.pixel_values for im in request.images])
            cached = self.model.encode_images(pixels, [im.grid_thw for im in request.images])
            self._encoder_cache[request.request_id] = cached
        return cached

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
        token_ids, logprobs = out.token_ids.tolist(), out.logprobs.tolist()
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
