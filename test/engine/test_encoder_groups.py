"""Vision passes are grouped by the encoder budget: whole requests, in order, at most the budget
of image tokens per pass, and a request over it alone."""

from __future__ import annotations

from valora.model_runner import encoder_groups
from valora.request import ImageSpan, Request
from valora.sampling_params import SamplingParams


def _request(*image_tokens: int) -> Request:
    spans = [ImageSpan(0, n, "", i) for i, n in enumerate(image_tokens)]
    return Request(
        request_id="r",
        prompt_token_ids=[0] * sum(image_tokens),
        sampling_params=SamplingParams(),
        image_spans=spans,
    )


def test_groups_fill_the_budget_in_order_and_a_large_request_goes_alone():
    a, b, c, d, e = _request(40, 20), _request(30), _request(100), _request(10), _request(90)
    groups = encoder_groups([a, b, c, d, e], budget=100)
    assert groups == [[a, b], [c], [d, e]]


def test_no_requests_no_pass():
    assert encoder_groups([], budget=100) == []
