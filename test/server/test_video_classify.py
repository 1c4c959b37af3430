"""Video chat and ``/v1/classify`` on a real server through the official ``openai`` client and
raw HTTP: an mp4 made by the test, a head-carrying dummy adapter per name, and the errors a bad
video or a head-less model gets (400, nobody else hurt, nothing held)."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest
from server_fixture import assert_idle, running_server
from video_files import colour_frames, encode_mp4, mp4_data_url

SMALL = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 8}  # a few dozen tokens per clip
GREEDY = {"temperature": 0, "max_tokens": 4, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def server():
    with running_server(
        "--num-adapter",
        "2",
        "--dummy-task-classes",
        "5",
        "--lora-backend",
        "torch",
        "--max-model-len",
        "512",
        "--max-video-frames",
        "16",
    ) as (url, engine, _):
        yield url, engine


@pytest.fixture(scope="module")
def clip_url():
    return mp4_data_url(encode_mp4(colour_frames(8)))


def video_messages(url: str, text: str = "What happens?") -> list[dict]:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def test_chat_with_an_mp4_through_the_openai_client(server, clip_url):
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    extra = {"extra_body": {"ignore_eos": True, "mm_processor_kwargs": SMALL}}
    reply = client.chat.completions.create(
        model="lora0", messages=video_messages(clip_url), **{**GREEDY, **extra}
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    # the video's tokens are in the prompt: more than the text alone takes
    text_only = client.chat.completions.create(
        model="lora0", messages=[{"role": "user", "content": "What happens?"}], **GREEDY
    )
    assert reply.usage.prompt_tokens > text_only.usage.prompt_tokens + 10
    assert_idle(url)


def test_classify_videos_and_texts(server, clip_url):
    url, engine = server
    body = {"model": "lora1", "messages": video_messages(clip_url), "mm_processor_kwargs": SMALL}
    for route in ("/v1/classify", "/classify"):
        reply = httpx.post(url + route, json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        (entry,) = reply.json()["data"]
        assert entry["num_classes"] == 5 and len(entry["probs"]) == 5
        assert abs(sum(entry["probs"]) - 1) < 1e-5
        assert (
            entry["label"] == engine.task_labels("lora1")[entry["probs"].index(max(entry["probs"]))]
        )
    texts = httpx.post(url + "/v1/classify", json={"model": "lora0", "input": ["a", "b c"]})
    assert [d["index"] for d in texts.json()["data"]] == [0, 1]
    assert texts.json()["usage"]["completion_tokens"] == 0
    assert_idle(url)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": "BASE", "input": "x"}, 400, "no task head"),
        ({"model": "nope", "input": "x"}, 404, "does not exist"),
        ({"model": "lora0"}, 400, "exactly one of"),
        ({"model": "lora0", "input": []}, 400, "non-empty"),
    ],
)
def test_classify_errors(server, body, status, message):
    url, _ = server
    if body["model"] == "BASE":
        body = {**body, "model": httpx.get(url + "/v1/models").json()["data"][0]["id"]}
    reply = httpx.post(url + "/v1/classify", json=body)
    assert reply.status_code == status and message in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    "video_url, message",
    [
        ("data:video/mp4;base64,AAAAAAAAAAAA", "cannot decode video"),
        ("data:video/mp4;base64,@@@", "base64"),
        ("file:///etc/passwd", "local media files are disabled"),
        ("ftp://x/clip.mp4", "unsupported video URL scheme"),
    ],
)
def test_bad_videos_get_400_and_hurt_nobody(server, clip_url, video_url, message):
    url, _ = server
    good = {"model": "lora0", "messages": video_messages(clip_url), "mm_processor_kwargs": SMALL}
    bad = {"model": "lora0", "messages": video_messages(video_url), "max_tokens": 2}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        goods = [
            pool.submit(httpx.post, url + "/v1/classify", json=good, timeout=60) for _ in range(3)
        ]
        reply = httpx.post(url + "/v1/chat/completions", json=bad, timeout=60)
        assert all(f.result().status_code == 200 for f in goods)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]
    assert_idle(url)


def test_too_many_videos_and_bad_processor_kwargs(server, clip_url):
    url, _ = server
    content = [{"type": "video_url", "video_url": {"url": clip_url}}] * 3
    body = {"model": "lora0", "messages": [{"role": "user", "content": content}]}
    reply = httpx.post(url + "/v1/chat/completions", json=body)
    assert reply.status_code == 400 and "3 videos" in reply.json()["error"]["message"]
    body = {
        "model": "lora0",
        "messages": video_messages(clip_url),
        "mm_processor_kwargs": {"max_duration_s": 1e9},
    }
    reply = httpx.post(url + "/v1/chat/completions", json=body)
    assert reply.status_code == 400 and "max_duration_s" in reply.json()["error"]["message"]
