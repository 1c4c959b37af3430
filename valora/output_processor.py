"""From sampled tokens to ``RequestOutput``s: detokenization, stop rules, output kinds.

Per request it keeps an incremental detokenizer, the text so far and how much of it (and of the
tokens) has been reported. Stop rules, in order: a stop token id or EOS (unless ignore_eos) once
``min_tokens`` are out; a stop string (the text is cut before it; only the tail that the new
piece can complete is searched); ``max_tokens``; the context limit.

Output kinds (``SamplingParams.output_kind``): CUMULATIVE reports everything so far after every
step; DELTA only what is new, holding back the last ``len(longest stop) - 1`` characters while the
request runs (they may still turn out to begin a stop string); FINAL_ONLY reports once, at the
end (what ``LLM.generate`` uses: no per-step output objects).
"""

from __future__ import annotations

from dataclasses import dataclass

from valora.request import (
    Classification,
    CompletionOutput,
    Request,
    RequestOutput,
    RequestStatus,
)
from valora.sampling_params import RequestOutputKind
from valora.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class SampledToken:
    token_id: int
    logprob: float
    top_logprobs: dict[int, float] | None


@dataclass
class _Track:
    detokenizer: IncrementalDetokenizer
    text: str = ""
    num_sent_tokens: int = 0
    num_sent_chars: int = 0


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._tracks: dict[str, _Track] = {}

    def add(self, request: Request) -> None:
        skip = request.sampling_params.skip_special_tokens
        self._tracks[request.request_id] = _Track(IncrementalDetokenizer(self.tokenizer, skip))

    def append(self, request: Request, token: SampledToken) -> RequestStatus | None:
        """Record one sampled token; returns the finishing status if a stop rule fired."""
        request.output_token_ids.append(token.token_id)
        if request.sampling_params.logprobs is not None:
            top = dict(token.top_logprobs or {})
            top[token.token_id] = token.logprob
            request.output_logprobs.append(top)
        track = self._tracks[request.request_id]
        piece = track.detokenizer.step(token.token_id)
        track.text += piece
        return self._stop_status(request, track, len(piece))

    def finish(self, request: Request) -> None:
        """Flush the detokenizer of a finishing request (unless a stop string cut its text)."""
        track = self._tracks[request.request_id]
        if request.status is not RequestStatus.FINISHED_STOPPED or not isinstance(
            request.stop_reason, str
        ):
            track.text += track.detokenizer.finish()

    def output(self, request: Request) -> RequestOutput | None:
        """The step's output for the request under its output kind (None: nothing to report).
        A finished request's state is dropped here."""
        kind = request.sampling_params.output_kind
        finished = request.is_finished
        track = self._tracks[request.request_id]
        if finished:
            del self._tracks[request.request_id]
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        first_token, first_char = 0, 0
        end_char = len(track.text)
        if kind is RequestOutputKind.DELTA:
            first_token, first_char = track.num_sent_tokens, track.num_sent_chars
            if not finished and request.sampling_params.stop:
                hold = max(len(s) for s in request.sampling_params.stop) - 1
                end_char = max(first_char, end_char - hold)
            track.num_sent_tokens = len(request.output_token_ids)
            track.num_sent_chars = end_char
        return _request_output(request, track.text[first_char:end_char], first_token)

    def classification_output(self, request: Request, result: Classification) -> RequestOutput:
        """The final output of a classify request (its state dropped): no tokens, the head's
        answer in ``classification``."""
        self._tracks.pop(request.request_id, None)
        out = _request_output(request, "", 0)
        out.classification = result
        return out

    def discard(self, request: Request) -> None:
        """Forget a request that ends without an output (aborted)."""
        self._tracks.pop(request.request_id, None)

    def error_output(self, request: Request, message: str) -> RequestOutput:
        """The final output of a request that failed inside a step (its state dropped)."""
        self._tracks.pop(request.request_id, None)
        out = _request_output(request, "", len(request.output_token_ids))
        out.outputs[0].finish_reason = "error"
        out.error = message
        return out

    def _stop_status(self, request: Request, track: _Track, piece_len: int):
        params, token = request.sampling_params, request.output_token_ids[-1]
        num_out = len(request.output_token_ids)
        if num_out >= params.min_tokens:
            if token in params.stop_token_ids:
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
            if not params.ignore_eos and token in request.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if params.stop and piece_len and self._cut_at_stop_string(request, track, piece_len):
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and num_out >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    @staticmethod
    def _cut_at_stop_string(request: Request, track: _Track, piece_len: int) -> bool:
        """Earlier text held no stop string, so a match must end inside the new piece."""
        text, best = track.text, None
        for stop in request.sampling_params.stop:
            index = text.find(stop, max(0, len(text) - piece_len - len(stop) + 1))
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return False
        track.text, request.stop_reason = text[: best[0]], best[1]
        return True


def _request_output(request: Request, text: str, first_token: int) -> RequestOutput:
    finished = request.is_finished
    with_logprobs = request.sampling_params.logprobs is not None
    completion = CompletionOutput(
        index=0,
        text=text,
        token_ids=request.output_token_ids[first_token:],
        logprobs=request.output_logprobs[first_token:] if with_logprobs else None,
        finish_reason=request.status.value if finished else None,
        stop_reason=request.stop_reason,
    )
    return RequestOutput(
        request_id=request.request_id,
        prompt_token_ids=request.prompt_token_ids,
        outputs=[completion],
        finished=finished,
        arrival_time=request.arrival_time,
        first_token_time=request.first_token_time,
        finish_time=request.finish_time,
        num_cached_tokens=request.num_cached_tokens,
        num_output_tokens=len(request.output_token_ids),
    )
