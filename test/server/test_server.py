"""The OpenAI-compatible server on a real uvicorn loopback server, through the official
``openai`` client (and raw HTTP where the client would refuse to send bad input): tiny model on
the CPU, four dummy adapters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import http.server
import io
import json
import threading
import time

import httpx
import openai
import pytest
from peft_reference import ADAPTERS, build_references
from PIL import Image
from server_fixture import metric, running_server

GREEDY = {"temperature": 0, "max_tokens": 6, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    _, dirs, _ = build_references(root, [], {"real": ADAPTERS["r8-all"]})
    return root, dirs["real"]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    Image.new("RGB", (56, 84), (10, 200, 30)).save(root / "green.png")
    return root


@pytest.fixture(scope="module")
def server(peft_dir, media_dir):
    root, _ = peft_dir
    # the torch LoRA backend: the Triton kernels would run in the CPU interpreter here (they
    # are tested against the reference in test/kernel)
    with running_server(
        "--num-adapter",
        "4",
        "--lora-root",
        str(root),
        "--max-model-len",
        "512",
        "--lora-backend",
        "torch",
        "--allowed-local-media-path",
        str(media_dir),
        "--allow-remote-media",
    ) as (url, engine, _):
        yield url, engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def image_data_url(width=56, height=56) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_with_image(client, model: str, **kwargs):
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url()}},
        {"type": "text", "text": "What is in the picture?"},
    ]
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_models_list_base_and_adapters(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) >= {"tiny", "lora0", "lora1", "lora2", "lora3"}
    assert models["tiny"].parent is None and models["lora2"].parent == "tiny"
    assert "dummy rank 32" in models["lora2"].root


def test_chat_with_an_image_stream_and_not(client):
    full = chat_with_image(client, "lora1", **GREEDY)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 6
    assert full.usage.prompt_tokens > 16  # the image's tokens are counted
    stream = chat_with_image(
        client, "lora1", stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


def test_images_are_processed_off_the_engine_thread(server, client, monkeypatch):
    """Tokenizing and image processing run in worker threads, not between the engine's steps."""
    engine = server[1]
    threads = {"process": set(), "step": set()}
    process, step = engine.process_prompt, engine.step

    def recorded(kind, fn):
        def call(*args):
            threads[kind].add(threading.get_ident())
            return fn(*args)

        return call

    monkeypatch.setattr(engine, "process_prompt", recorded("process", process))
    monkeypatch.setattr(engine, "step", recorded("step", step))
    assert chat_with_image(client, "lora1", **GREEDY).usage.completion_tokens == 6
    assert threads["process"] and threads["step"]
    assert not threads["process"] & threads["step"]


def test_adapters_change_the_output(client):
    outs = {
        m: chat_with_image(client, m, **GREEDY).choices[0].message.content
        for m in ("tiny", "lora0", "lora3")
    }
    assert len(set(outs.values())) == 3


def test_completions_and_logprobs(client):
    out = client.completions.create(model="lora2", prompt="Once upon a time", logprobs=2, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 6 and len(lp.token_logprobs) == 6
    assert all(len(top) >= 1 for top in lp.top_logprobs)
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        logprobs=True,
        top_logprobs=3,
        **GREEDY,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 6 and all(e.logprob <= 0 for e in content)
    assert all(len(e.top_logprobs) >= 2 for e in content)


def test_adapter_load_unload_round_trip(server, client, peft_dir, tmp_path):
    url, _ = server
    _, path = peft_dir
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "real", "lora_path": path})
    assert r.status_code == 200 and "added" in r.text
    assert "real" in {m.id for m in client.models.list().data}
    assert chat_with_image(client, "real", **GREEDY).usage.completion_tokens == 6
    evil = {"lora_name": "evil", "lora_path": str(tmp_path / ".." / "x")}
    outside = httpx.post(url + "/v1/load_lora_adapter", json=evil)
    assert outside.status_code == 400 and "outside the allowed root" in outside.text
    r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "real"})
    assert r.status_code == 200 and "removed" in r.text
    with pytest.raises(openai.NotFoundError):
        chat_with_image(client, "real", **GREEDY)
    assert (
        httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "real"}).status_code == 404
    )


BAD_CHAT = [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "does not exist"),
    ({"model": "tiny", "messages": []}, 400, "messages must not be empty"),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        400,
        "max_tokens",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 600},
        400,
        "maximum context length",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "word " * 600}]},
        400,
        "does not fit",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": -1},
        400,
        "temperature",
    ),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 2}, 400, "top_p"),
    (
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        },
        400,
        "cannot decode image",
    ),
    (
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}
                    ],
                }
            ],
        },
        400,
        "base64",
    ),
    (
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}],
                }
            ],
        },
        400,
        "outside the allowed media directory",
    ),
    (
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}}
                    ],
                }
            ],
        },
        400,
        "cannot fetch image",
    ),
    (
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://host/a.png"}}],
                }
            ],
        },
        400,
        "scheme",
    ),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n=1"),
    ({"model": "tiny", "messages": "hello"}, 400, "invalid request"),
]


@pytest.mark.parametrize("body, status, message", BAD_CHAT)
def test_bad_input_gets_a_clear_error_and_hurts_nobody(server, client, body, status, message):
    url, engine = server
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["code"] == status and "type" in err
    ok = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], **GREEDY
    )
    assert ok.usage.completion_tokens == 6


def test_malformed_json_and_too_many_images(server):
    url, _ = server
    r = httpx.post(
        url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    parts = [{"type": "image_url", "image_url": {"url": image_data_url()}}] * 9
    body = {"model": "tiny", "messages": [{"role": "user", "content": parts}]}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and "at most 8" in r.json()["error"]["message"]


def test_local_and_remote_images(server, client, media_dir):
    local = chat_with_url(client, str(media_dir / "green.png"))
    assert local.usage.prompt_tokens > 16
    assert chat_with_url(client, (media_dir / "green.png").as_uri()).usage == local.usage
    traversal = str(media_dir / ".." / media_dir.name / ".." / "etc")
    with pytest.raises(openai.BadRequestError, match="outside the allowed media directory"):
        chat_with_url(client, traversal)
    with serve_files(media_dir) as base:  # http(s) on: fetched with a timeout and a size cap
        remote = chat_with_url(client, base + "/green.png")
        assert remote.choices[0].message.content == local.choices[0].message.content


def chat_with_url(client, url: str):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    messages = [{"role": "user", "content": content}]
    return client.chat.completions.create(model="tiny", messages=messages, **GREEDY)


@contextlib.contextmanager
def serve_files(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_unloading_an_adapter_in_use_lets_its_stream_finish(server, peft_dir):
    url, _ = server
    _, path = peft_dir
    httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "busy", "lora_path": path})
    body = {
        "model": "busy",
        "prompt": "stream on",
        "max_tokens": 40,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        gone = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "busy"})
        assert gone.status_code == 200
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    finish = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in rest[:-1]]
    assert finish[-1] == "length"  # all 40 tokens, on the adapter it started with
    refused = httpx.post(url + "/v1/completions", json={**body, "stream": False})
    assert refused.status_code == 404


def test_disconnect_mid_stream_frees_its_blocks(server):
    url, _ = server
    body = {
        "model": "lora0",
        "prompt": "tell me everything",
        "max_tokens": 400,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert metric(url, "valora_num_requests_running") == 1
    deadline = time.monotonic() + 20  # closed mid-stream: the request must be aborted
    while metric(url, "valora_num_requests_running") or metric(url, "valora_kv_cache_usage_perc"):
        assert time.monotonic() < deadline, "the aborted request still holds blocks"
        time.sleep(0.1)
    assert metric(url, "valora_num_requests_waiting") == 0


def test_200_concurrent_streams_complete_exactly(server):
    url, _ = server
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    prompts = [f"Request {i % 5}: count" for i in range(200)]
    models = ["tiny", "lora0", "lora1", "lora2", "lora3"]

    async def one(i: int):
        stream = await client.completions.create(
            model=models[i % 5],
            prompt=prompts[i],
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage is not None:
                usage = chunk.usage
        return text, usage

    async def run_all():
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(run_all())
    assert all(u is not None and u.completion_tokens == 6 for _, u in results)
    reference = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    expected = {}  # each stream's text == the same request answered alone, not streamed
    for i, (text, _) in enumerate(results):
        key = (models[i % 5], prompts[i])
        if key not in expected:
            alone = reference.completions.create(model=key[0], prompt=key[1], **GREEDY)
            expected[key] = alone.choices[0].text
        assert text == expected[key], key


def test_overload_answers_503_with_retry_after():
    """One request in flight allowed: while the engine thread is held up, a first request waits
    to be added and a second one is turned away at once."""
    with running_server("--max-pending", "1") as (url, _, app):
        app.state.runner.submit(time.sleep, 2.0)  # the engine thread is busy for 2 s
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
        first = {}
        sender = threading.Thread(
            target=lambda: first.update(
                r=httpx.post(url + "/v1/completions", json=body, timeout=30)
            )
        )
        sender.start()
        time.sleep(0.5)
        busy = httpx.post(url + "/v1/completions", json=body, timeout=5)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "overloaded"
        sender.join()
        assert first["r"].status_code == 200  # the first one is served once the engine is back


def test_api_key_guards_every_route_but_health():
    with running_server("--api-key", "s3cret") as (url, _, _app):
        assert httpx.get(url + "/health").status_code == 200
        for path in ("/v1/models", "/metrics", "/version"):
            assert httpx.get(url + path).status_code == 401
        assert (
            httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == "tiny"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        for image in ("/etc/passwd", "http://127.0.0.1:9/a.png"):  # default media policy
            with pytest.raises(openai.BadRequestError, match="disabled on this server"):
                chat_with_url(good, image)
