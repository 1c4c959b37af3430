"""Output processor: stop rules, stop strings across pieces, output kinds, logprobs; and stop
strings end to end through the engine (tiny model)."""

from __future__ import annotations

import pytest

from valora.llm import LLM
from valora.output_processor import OutputProcessor, SampledToken
from valora.request import Request, RequestStatus
from valora.sampling_params import RequestOutputKind, SamplingParams
from valora.tokenizer import Tokenizer

TOKENIZER = Tokenizer.builtin()
EOS = TOKENIZER.encode("<|im_end|>")[0]


def _run(text_or_ids, **params):
    """Feed tokens one by one as if sampled; returns (request, outputs, final status)."""
    ids = TOKENIZER.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    request = Request("r", [1, 2, 3], SamplingParams(**params), eos_token_ids=(EOS,))
    processor = OutputProcessor(TOKENIZER, max_model_len=1000)
    processor.add(request)
    outputs, status = [], None
    for token in ids:
        status = processor.append(request, SampledToken(token, -0.5, {token: -0.5, 7: -2.0}))
        if status is not None:
            request.status = status
            processor.finish(request)
        out = processor.output(request)
        if out is not None:
            outputs.append(out)
        if status is not None:
            break
    return request, outputs, status


def test_stop_string_spanning_tokens_cuts_the_text():
    request, outputs, status = _run("Hello world, this is the END of it", stop=["the END"])
    assert status is RequestStatus.FINISHED_STOPPED
    assert request.stop_reason == "the END"
    assert outputs[-1].outputs[0].text == "Hello world, this is "
    assert outputs[-1].outputs[0].finish_reason == "stop"


def test_earliest_of_several_stop_strings_wins():
    _, outputs, _ = _run("alpha beta gamma", stop=["gamma", "beta gam"])
    assert outputs[-1].outputs[0].text == "alpha "


def test_stop_token_eos_min_tokens_and_max_tokens():
    ids = TOKENIZER.encode("one two three")
    request, _, status = _run(ids + [99, 5], stop_token_ids=[99])
    assert status is RequestStatus.FINISHED_STOPPED and request.stop_reason == 99
    _, _, status = _run(ids + [EOS, 5])
    assert status is RequestStatus.FINISHED_STOPPED
    request, _, status = _run([EOS, EOS, 5, 6], min_tokens=3, max_tokens=4)
    assert status is RequestStatus.FINISHED_LENGTH and len(request.output_token_ids) == 4
    request, _, status = _run([EOS, 5, 6], ignore_eos=True, max_tokens=3)
    assert status is RequestStatus.FINISHED_LENGTH


@pytest.mark.parametrize("stop", [[], ["never there"], ["ing"]])
def test_delta_outputs_concatenate_to_the_cumulative_output(stop):
    ids = TOKENIZER.encode("Streaming deltas must add up exactly, 中文 too.")
    _, cumulative, _ = _run(ids, stop=stop, max_tokens=len(ids))  # finishes at the last token
    _, deltas, _ = _run(ids, stop=stop, max_tokens=len(ids), output_kind=RequestOutputKind.DELTA)
    assert len(deltas) == len(cumulative)
    assert "".join(d.outputs[0].text for d in deltas) == cumulative[-1].outputs[0].text
    tokens = [t for d in deltas for t in d.outputs[0].token_ids]
    assert tokens == cumulative[-1].outputs[0].token_ids
    hold = max((len(s) for s in stop), default=1) - 1
    sent = ""
    for delta, full in zip(deltas[:-1], cumulative[:-1]):  # nothing that may start a stop leaks
        sent += delta.outputs[0].text
        assert full.outputs[0].text.startswith(sent)
        assert len(sent) == max(0, len(full.outputs[0].text) - hold)


def test_final_only_reports_once_with_logprobs():
    request, outputs, status = _run(
        "a b c d", max_tokens=3, logprobs=1, output_kind=RequestOutputKind.FINAL_ONLY
    )
    assert status is RequestStatus.FINISHED_LENGTH and len(outputs) == 1
    completion = outputs[0].outputs[0]
    assert completion.token_ids == request.output_token_ids and len(completion.token_ids) == 3
    assert completion.logprobs == [{t: -0.5, 7: -2.0} for t in completion.token_ids]


def test_stop_string_end_to_end():
    llm = LLM("tiny", device="cpu")
    greedy = SamplingParams(
        temperature=0, max_tokens=24, ignore_eos=True, skip_special_tokens=False
    )
    full = llm.generate("Once upon a time", greedy, use_tqdm=False)[0].outputs[0].text
    assert len(full) > 8
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    params = SamplingParams(
        temperature=0, max_tokens=24, ignore_eos=True, stop=[stop], skip_special_tokens=False
    )
    out = llm.generate("Once upon a time", params, use_tqdm=False)[0].outputs[0]
    assert out.text == cut and out.finish_reason == "stop" and out.stop_reason == stop
    assert llm.engine.snapshot().is_idle
