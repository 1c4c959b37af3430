"""Request and response bodies of the OpenAI-compatible API (pydantic).

Unknown fields are ignored (clients send many); known ones are validated here, and the sampling
fields become a ``SamplingParams`` (which validates their values). Besides OpenAI's fields, the
ones vLLM accepts are taken too: ``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``stop_token_ids``, ``min_tokens``. OpenAI fields this server does not implement yet
(``UNSUPPORTED``) are refused by name with a 400 unless they hold their no-op value: a request
never silently loses what it asked for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from valora.sampling_params import SEED_RANGE, SamplingParams


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestError(ValueError):
    """A bad request (-> 400) about one field (``param``, OpenAI's error ``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# field -> the values that ask for nothing (accepted); anything else -> 400 naming the field
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "suffix": (None, ""),
}


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])  # int64
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM's extras
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    min_tokens: int = 0
    # OpenAI fields not implemented yet: refused unless no-op (``UNSUPPORTED``)
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logit_bias: Any = None
    best_of: Any = None

    def check_supported(self) -> None:
        for name, no_ops in UNSUPPORTED.items():
            value = getattr(self, name, None)
            if not any(value == no_op for no_op in no_ops):
                raise RequestError(f"'{name}' is not supported by this server yet", name)

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Raises ValueError (-> 400) on invalid values."""
        self.check_supported()
        if self.n != 1:
            raise RequestError("only n=1 is supported", "n")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids),
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


class ImageURL(_Body):
    url: str
    detail: str | None = None


class VideoURL(_Body):
    url: str  # data:video/<type>;base64,..., a local file (under the media policy), or http(s)


class ContentPart(_Body):
    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: VideoURL | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    mm_processor_kwargs: dict[str, Any] | None = None  # vLLM's per-request processor overrides
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


class ClassificationRequest(_Body):
    """vLLM's classification route: ``model`` names an adapter with a task head; ``input`` is
    one text or a list of texts, or ``messages`` is one chat (with images / videos)."""

    model: str
    input: str | list[str] | None = None
    messages: list[ChatMessage] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    user: str | None = None

    def prompts_given(self) -> int:
        if (self.input is None) == (self.messages is None):
            raise RequestError("give exactly one of 'input' and 'messages'", "input")
        if self.messages is not None:
            return 1
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts or any(not t for t in texts):
            raise RequestError("'input' must hold non-empty texts", "input")
        return len(texts)


class LoadLoRAAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoRAAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


def error_body(message: str, kind: str, code: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
