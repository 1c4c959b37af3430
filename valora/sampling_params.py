"""Per-request sampling parameters.

``SamplingParams`` is the one class shared by the server and the engine: the server builds it from
the OpenAI request body, the scheduler reads its stop rules, and the sampler
(``valora/layers/sampler.py``) reads its sampling fields. Fields, defaults and meanings follow
vLLM. This module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import NoReturn

MAX_LOGPROBS = 20
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as OpenAI's ``seed``


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class RequestOutputKind(Enum):
    """What the engine reports for a request after each step (vLLM's kinds)."""

    CUMULATIVE = "cumulative"  # every step: all text and tokens so far
    DELTA = "delta"  # every step: only what is new (text held back while it may start a stop)
    FINAL_ONLY = "final_only"  # one output, when the request finishes


@dataclass
class SamplingParams:
    """How to pick the tokens of one request (vLLM semantics).

    temperature 0 (or top_k 1) is greedy: top_p / top_k / min_p are then irrelevant, penalties
    still apply. top_k 0 or -1 disables top-k. repetition_penalty scales the logits of every token
    seen in prompt or output (> 1 discourages); presence/frequency penalties are subtracted for
    tokens of the output only. max_tokens None means "until the context is full". Until min_tokens
    tokens are generated, EOS and stop_token_ids cannot be sampled. ignore_eos only means "do not
    stop on EOS". logprobs: how many top alternatives to return per generated token (None: none;
    0: only the chosen token's log-prob).

    Invariant: after construction every field is in its allowed range (else ValueError), ``stop``
    is a list of non-empty strings and ``stop_token_ids`` a list of non-negative ints.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._validate()

    def _validate(self) -> None:
        if not _is_int(self.n) or self.n != 1:
            _fail("n", "1 (only one sequence per request is supported)", self.n)
        _check_range("temperature", self.temperature, ">= 0", lambda x: x >= 0)
        _check_range("top_p", self.top_p, "in (0, 1]", lambda x: 0 < x <= 1)
        if not _is_int(self.top_k) or self.top_k < -1:
            _fail("top_k", "-1 or 0 (disabled) or an int >= 1", self.top_k)
        _check_range("min_p", self.min_p, "in [0, 1]", lambda x: 0 <= x <= 1)
        _check_range("repetition_penalty", self.repetition_penalty, "> 0", lambda x: x > 0)
        for name in ("presence_penalty", "frequency_penalty"):
            _check_range(name, getattr(self, name), "in [-2, 2]", lambda x: -2 <= x <= 2)
        if self.seed is not None and not (
            _is_int(self.seed) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]
        ):
            _fail("seed", "None or an int64 (in [-2**63, 2**63 - 1])", self.seed)
        if not all(isinstance(s, str) and s for s in self.stop):
            _fail("stop", "a string or a list of non-empty strings", self.stop)
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            _fail("stop_token_ids", "a list of non-negative ints", self.stop_token_ids)
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            _fail("max_tokens", "None or an int >= 1", self.max_tokens)
        upper = self.max_tokens if self.max_tokens is not None else float("inf")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= upper:
            _fail("min_tokens", f"an int in [0, max_tokens={self.max_tokens}]", self.min_tokens)
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            _fail("logprobs", f"None or an int in [0, {MAX_LOGPROBS}]", self.logprobs)
        if not isinstance(self.output_kind, RequestOutputKind):
            _fail("output_kind", "a RequestOutputKind", self.output_kind)

    @property
    def is_greedy(self) -> bool:
        """Argmax decoding: temperature 0 or top_k 1 (top_p / top_k / min_p then do nothing)."""
        return self.temperature == 0 or self.top_k == 1


def _fail(name: str, allowed: str, value: object) -> NoReturn:
    raise ValueError(f"SamplingParams.{name} must be {allowed}, got {value!r}")


def _check_range(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> None:
    # `not ok(x)` (rather than a negated comparison) also rejects NaN; infinities are refused.
    if not _is_number(value) or not math.isfinite(value) or not ok(value):
        _fail(name, allowed, value)
