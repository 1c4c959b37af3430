"""No request, client or adapter can take the server down (issue findings 1-4, 8, 10), on a real
uvicorn server: tiny model on the CPU, two dummy adapters and PEFT adapters loaded at run time.
Every test ends with the engine alive and nothing held (``assert_idle``)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import httpx
import openai
import pytest
from peft_reference import ADAPTERS, build_references
from safetensors.torch import load_file, save_file
from server_fixture import assert_idle, metric, running_server

GREEDY = {"temperature": 0, "max_tokens": 6, "extra_body": {"ignore_eos": True}}
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    chosen = {"one": ADAPTERS["r8-all"], "two": ADAPTERS["r16-qv-down-rslora"]}
    _, dirs, _ = build_references(root, [], chosen)
    return dirs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-root")
    args = (
        "--num-adapter",
        "2",
        "--lora-root",
        str(root),
        "--max-cpu-loras",
        "1",
        "--max-model-len",
        "96",
        "--lora-backend",
        "torch",
    )
    with running_server(*args) as (url, engine, app):
        yield url, engine, app, root


async def stream_text(client, model: str, prompt: str, max_tokens: int = 12) -> str:
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        stream=True,
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )
    return "".join([c.choices[0].text async for c in stream if c.choices])


def expected_texts(url: str, jobs: list[tuple[str, str]]) -> list[str]:
    """Each job answered alone: what it must also answer beside anything else."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    return [
        client.completions.create(
            model=m, prompt=p, temperature=0, max_tokens=12, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
        for m, p in jobs
    ]


def with_bystanders(url: str, disturb, num: int = 24):
    """Runs ``num`` streams over the base and both adapters while ``disturb(client)`` (async)
    runs; asserts every stream's text equals its answer alone. -> disturb's result."""
    jobs = [(("tiny", "lora0", "lora1")[i % 3], f"bystander {i % 4}") for i in range(num)]
    expected = expected_texts(url, sorted(set(jobs)))
    expected = dict(zip(sorted(set(jobs)), expected))

    async def run():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        streams = [stream_text(client, m, p) for m, p in jobs]
        *texts, result = await asyncio.gather(*streams, disturb(client))
        return texts, result

    texts, result = asyncio.run(run())
    assert texts == [expected[j] for j in jobs]
    return result


def test_callers_that_give_up_while_their_add_waits_do_not_kill_the_engine(server):
    """Finding 1: the engine thread is held while 40 non-streaming requests queue their adds
    and time out; their cancelled commands must be skipped, not crash the loop."""
    url, _, app, _ = server
    release = threading.Event()
    app.state.runner.submit(release.wait, 30)

    def impatient(i: int) -> None:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                url + "/v1/chat/completions",
                timeout=0.5,
                json={"model": ("tiny", "lora0")[i % 2], "messages": CHAT, "max_tokens": 8},
            )

    threads = [threading.Thread(target=impatient, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)  # the server notices the disconnects and cancels their calls
    release.set()
    assert_idle(url)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="lora1", messages=CHAT, **GREEDY)
    assert reply.usage.completion_tokens == 6


def test_chat_on_an_adapter_without_max_tokens_hurts_nobody(server):
    """Finding 2: the normal OpenAI call (no max_tokens) under the VaLoRA policy."""
    url, *_ = server

    async def no_max_tokens(client):
        return await client.chat.completions.create(
            model="lora0", messages=CHAT, temperature=0, extra_body={"ignore_eos": True}
        )

    reply = with_bystanders(url, no_max_tokens)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.total_tokens == 96  # the context left after the prompt
    assert_idle(url)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_outside_int64_is_refused_and_hurts_nobody(server, seed):
    """Finding 3."""
    url, *_ = server

    async def bad_seeds(client):
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "lora0", "messages": CHAT, "max_tokens": 4, "seed": seed}
            return await asyncio.gather(
                *(http.post(url + "/v1/chat/completions", json=body) for _ in range(12))
            )

    for r in with_bystanders(url, bad_seeds):
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert_idle(url)


def test_a_request_failing_inside_a_step_fails_alone(server):
    """Fault injection: one request's computation raises inside the step; it gets a 500 with
    its own message, and the 24 streams in its batches finish exactly."""
    url, engine, _, _ = server
    poison = engine.tokenizer.encode("poison pill")
    prepare = engine.runner.prepare

    def faulty(sched):
        if any(r.prompt_token_ids[: len(poison)] == poison for r in sched.requests):
            raise RuntimeError("secret internal detail")
        return prepare(sched)

    async def poisoned(client):
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "lora1", "prompt": "poison pill", "max_tokens": 4}
            return await http.post(url + "/v1/completions", json=body)

    engine.runner.prepare = faulty
    try:
        r = with_bystanders(url, poisoned)
    finally:
        del engine.runner.prepare
    assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert_idle(url)


def test_metrics_count_a_streamed_request_like_a_plain_one(server):
    """Finding 8: a streamed request's generated tokens are all counted, not its last chunk's."""
    url, *_ = server
    before = metric(url, "valora_generation_tokens_total")
    asyncio.run(
        stream_text(
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="x"),
            "lora0",
            "count to ten",
            max_tokens=9,
        )
    )
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    client.completions.create(
        model="tiny", prompt="count", temperature=0, max_tokens=5, extra_body={"ignore_eos": True}
    )
    deadline = time.monotonic() + 5
    while metric(url, "valora_generation_tokens_total") < before + 14:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metric(url, "valora_generation_tokens_total") == before + 14


def load(url: str, name: str, path) -> httpx.Response:
    return httpx.post(
        url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
    )


def chat(url: str, model: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        timeout=30,
        json={
            "model": model,
            "messages": CHAT,
            "temperature": 0,
            "max_tokens": 6,
            "ignore_eos": True,
        },
    )


def test_an_evicted_adapter_whose_files_changed_or_vanished_fails_alone(server, peft_dirs):
    """Finding 10: --max-cpu-loras 1, so using another adapter evicts this one's host copy and
    its next request re-reads the files: a change is refused for this adapter only (the
    prefix cache still holds KV of the old weights under the same version)."""
    url, _, _, root = server
    shutil.copytree(peft_dirs["one"], root / "mutable")
    assert load(url, "mutable", root / "mutable").status_code == 200
    first = chat(url, "mutable")
    assert first.status_code == 200
    assert chat(url, "lora0").status_code == 200  # evicts mutable's host copy
    weights = root / "mutable" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 2 for k, v in tensors.items()}, weights)

    async def changed(client):
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "mutable", "messages": CHAT, "max_tokens": 4}
            return await http.post(url + "/v1/chat/completions", json=body)

    r = with_bystanders(url, changed)
    assert r.status_code == 400 and "changed since it was loaded" in r.json()["error"]["message"]
    shutil.rmtree(root / "mutable")
    r = chat(url, "mutable")
    assert r.status_code == 400 and "cannot be read again" in r.json()["error"]["message"]
    shutil.copytree(peft_dirs["one"], root / "mutable")  # the same bytes again: served again
    again = chat(url, "mutable")
    assert again.status_code == 200
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    save_file({k: v * 2 for k, v in tensors.items()}, weights)
    assert load(url, "mutable", root / "mutable").status_code == 200  # a reload: new version
    assert chat(url, "mutable").status_code == 200
    assert_idle(url)


def test_an_adapter_in_use_keeps_its_host_copy(server, peft_dirs):
    """While a stream runs on an adapter, other adapters' requests cannot evict its host copy,
    so deleting its files mid-stream does not break the stream."""
    url, _, _, root = server
    shutil.copytree(peft_dirs["two"], root / "busy")
    assert load(url, "busy", root / "busy").status_code == 200
    body = {
        "model": "busy",
        "prompt": "go on",
        "max_tokens": 60,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        shutil.rmtree(root / "busy")
        assert chat(url, "lora0").status_code == 200 and chat(url, "lora1").status_code == 200
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2].replace(" ", "")
    assert_idle(url)


def test_max_loras_one_with_merges_serves_everyone():
    """Finding 4: a pool of one rank-64 adapter under the VaLoRA policy's merges."""
    with running_server(
        "--num-adapter", "4", "--max-loras", "1", "--lora-backend", "torch", "--max-model-len", "96"
    ) as (url, *_):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)

        async def run():
            jobs = [stream_text(client, f"lora{i % 4}", f"hello {i % 3}") for i in range(48)]
            return await asyncio.gather(*jobs)

        texts = asyncio.run(run())
        alone = expected_texts(url, [(f"lora{i % 4}", f"hello {i % 3}") for i in range(48)])
        assert texts == alone
        assert_idle(url)
