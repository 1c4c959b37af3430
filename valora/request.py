"""Request state shared by the scheduler, the block manager and the engine. Imports no torch.

A request's tokens are ``prompt_token_ids + output_token_ids``. ``num_computed_tokens`` of them
have their KV in the cache (counting prefix-cache hits); the rest are scheduled in later steps, a
chunk at a time. ``block_table[i]`` holds the KV of tokens ``i*block_size:(i+1)*block_size``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from valora.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self.value in ("stop", "length", "abort")


@dataclass(frozen=True)
class ImageSpan:
    """One image inside the expanded prompt: its pad tokens are [start, start + num_tokens)."""

    start: int
    num_tokens: int
    content_hash: str
    index: int  # position of the image in the request's image list


@dataclass(eq=False)  # identity: requests are compared in scheduler lists every step
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    adapter_id: str | None = None  # None: the base model
    adapter_version: int = 0
    images: list[Any] = field(default_factory=list)  # ProcessedVision, in prompt order
    image_spans: list[ImageSpan] = field(default_factory=list)
    mrope_positions: Any = None  # [3, len(prompt)] int64 array
    rope_delta: int = 0
    eos_token_ids: tuple[int, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)
    classify: bool = False  # prefill only: the adapter's task head answers, no token is sampled

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[Any] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prefix-cache hits at the last allocation
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache hash chain (a cache)
    num_preemptions: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    stop_reason: int | str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_image_tokens(self) -> int:
        """The prompt's ``<|image_pad|>`` tokens: one vision embedding each."""
        return sum(s.num_tokens for s in self.image_spans)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without building the whole sequence."""
        prompt_len = len(self.prompt_token_ids)
        if start >= prompt_len:
            return self.output_token_ids[start - prompt_len : end - prompt_len]
        if end <= prompt_len:
            return self.prompt_token_ids[start:end]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - prompt_len]

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def cache_seed(self) -> tuple:
        """Seeds the prefix-cache hash chain: blocks of different adapters (or of two versions
        of one adapter) never share a hash."""
        return ("adapter", self.adapter_id, self.adapter_version)

    def image_hashes_in(self, start: int, end: int) -> tuple[str, ...]:
        """Content hashes of the images whose pad tokens overlap tokens [start, end)."""
        return tuple(
            s.content_hash
            for s in self.image_spans
            if s.start < end and start < s.start + s.num_tokens
        )


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass(frozen=True)
class Classification:
    """A task head's answer for one prompt: class probabilities (label order) and the argmax."""

    label: str
    probs: list[float]
    labels: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class RequestOutput:
    """What the engine reports for a request after a step (vLLM's shape)."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    num_cached_tokens: int = 0
    prompt: str | None = None
    num_output_tokens: int = 0  # generated so far (a DELTA output carries only the new ones)
    error: str | None = None  # set when the request failed inside a step (finished is True)
    classification: Classification | None = None  # a classify request's answer
