"""OpenAI response bodies and stream chunks built from ``RequestOutput``s."""

from __future__ import annotations

import json
import time
import uuid

from valora.request import CompletionOutput, RequestOutput


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(out: RequestOutput, num_output: int) -> dict:
    prompt = len(out.prompt_token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": num_output,
        "total_tokens": prompt + num_output,
    }


def chat_logprobs(completion: CompletionOutput, tokenizer, first: int = 0) -> dict | None:
    """OpenAI chat logprobs of tokens ``first..`` of the completion (delta for streams)."""
    if completion.logprobs is None:
        return None
    content = []
    for token_id, top in zip(completion.token_ids[first:], completion.logprobs[first:]):
        content.append(
            {
                **_entry(tokenizer, token_id, top[token_id]),
                "top_logprobs": [
                    _entry(tokenizer, t, lp)
                    for t, lp in top.items()
                    if t != token_id or len(top) == 1
                ],
            }
        )
    return {"content": content}


def completion_logprobs(completion: CompletionOutput, tokenizer, first: int = 0) -> dict | None:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs."""
    if completion.logprobs is None:
        return None
    ids, tops = completion.token_ids[first:], completion.logprobs[first:]
    return {
        "tokens": [tokenizer.decode([t]) for t in ids],
        "token_logprobs": [top[t] for t, top in zip(ids, tops)],
        "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in top.items()} for top in tops],
        "text_offset": [],
    }


def _entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode())}


def chat_response(out: RequestOutput, model: str, request_id: str, tokenizer) -> dict:
    c = out.outputs[0]
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c, tokenizer),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
        ],
        "usage": usage(out, len(c.token_ids)),
    }


def classification_response(outs: list[RequestOutput], model: str, request_id: str) -> dict:
    """vLLM's classification response: one entry per input, in input order."""
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outs)
    return {
        "id": request_id,
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [
            {
                "index": i,
                "label": o.classification.label,
                "probs": o.classification.probs,
                "num_classes": o.classification.num_classes,
            }
            for i, o in enumerate(outs)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 0,
            "total_tokens": prompt_tokens,
        },
    }


def completion_response(
    out: RequestOutput, model: str, request_id: str, tokenizer, echo_text: str = ""
) -> dict:
    c = out.outputs[0]
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": echo_text + c.text,
                "logprobs": completion_logprobs(c, tokenizer),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
        ],
        "usage": usage(out, len(c.token_ids)),
    }


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class ChunkBuilder:
    """One stream's chunks: same id / created / model in every chunk (OpenAI's format)."""

    def __init__(self, kind: str, model: str, request_id: str, tokenizer) -> None:
        self.kind, self.model, self.id, self.tokenizer = kind, model, request_id, tokenizer
        self.created = int(time.time())
        self.num_tokens = 0  # tokens already sent

    def _chunk(self, choices: list, **extra) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def role(self) -> str:
        return sse(
            self._chunk(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        )

    def delta(self, out: RequestOutput) -> str | None:
        """The chunk for a DELTA-kind output (None when it carries nothing new)."""
        c = out.outputs[0]
        finish = c.finish_reason if out.finished else None
        if not c.text and finish is None and not c.token_ids:
            return None
        self.num_tokens += len(c.token_ids)
        if self.kind == "chat":
            delta = {"content": c.text} if c.text else {}
            logprobs = chat_logprobs(c, self.tokenizer)
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            logprobs = completion_logprobs(c, self.tokenizer)
            choice = {"index": 0, "text": c.text, "logprobs": logprobs, "finish_reason": finish}
        return sse(self._chunk([choice]))

    def usage(self, out: RequestOutput) -> str:
        return sse(self._chunk([], usage=usage(out, self.num_tokens)))
