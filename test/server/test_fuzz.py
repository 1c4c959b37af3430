"""Property-based fuzzing of the HTTP surface: schemathesis generates requests from the app's own
OpenAPI schema (valid and invalid ones) against a real uvicorn server; no case may get a 5xx,
every error must carry OpenAI's body, and the server must stay healthy with nothing held.
Bounded: a fixed number of examples per operation, short generations (96-token context)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from server_fixture import SMALL_LIMITS, assert_idle, running_server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-root")
    with running_server("--num-adapter", "2", "--lora-root", str(root), *SMALL_LIMITS) as (
        url,
        *_,
    ):
        yield url


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server + "/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gets_a_5xx(case, fuzz_server):
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        # most cases name a served model, so the fuzzed fields reach the engine (a random
        # name stops at the 404)
        names = ("tiny", "lora0", "lora1", body["model"])
        body["model"] = names[len(repr(body)) % 4]
    response = case.call(timeout=60)
    assert response.status_code < 500, (case.body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def test_the_server_is_healthy_after_the_fuzzing(fuzz_server):
    assert_idle(fuzz_server)
    r = httpx.post(
        fuzz_server + "/v1/completions",
        timeout=30,
        json={"model": "lora0", "prompt": "still here", "max_tokens": 3},
    )
    assert r.status_code == 200
