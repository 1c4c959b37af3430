"""The server's edges on a real uvicorn server (issue findings 5-7, 9 and the lifecycle): one
OpenAI error body for every status, request and image size limits checked before work, adapter
files confined to the root, docs behind the key, a dead engine reported as such, and SIGTERM
draining in-flight requests."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from peft_reference import ADAPTERS, build_references
from PIL import ImageFile
from server_fixture import SMALL_LIMITS, running_server
from soak_setup import free_port, wait_healthy

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    _, dirs, _ = build_references(root, [], {"one": ADAPTERS["r8-all"]})
    return Path(dirs["one"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-root")
    with running_server("--num-adapter", "1", "--lora-root", str(root), *SMALL_LIMITS) as (
        url,
        *_,
    ):
        yield url, root


def assert_openai_error(r: httpx.Response, status: int, message: str = "") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    assert message in err["message"] and "Traceback" not in r.text
    return err


def test_unknown_routes_wrong_methods_and_bad_bodies_get_openai_errors(server):
    url, _ = server
    assert_openai_error(httpx.get(url + "/v1/nope"), 404, "no route GET /v1/nope")
    assert_openai_error(httpx.get(url + "/v1/chat/completions"), 405)
    assert_openai_error(httpx.delete(url + "/v1/models"), 405)
    assert_openai_error(
        httpx.post(
            url + "/v1/completions",
            content=b"\xff\xfe",
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert_openai_error(httpx.post(url + "/v1/completions", json=[1, 2]), 400, "invalid request")
    err = assert_openai_error(httpx.post(url + "/v1/completions", json={"model": "tiny"}), 400)
    assert err["param"] == "prompt"


def test_a_body_over_the_limit_gets_413_declared_or_chunked(server):
    url, _ = server
    big = b'{"model": "tiny", "prompt": "' + b"x" * (1 << 20) + b'"}'
    headers = {"content-type": "application/json"}
    assert_openai_error(httpx.post(url + "/v1/completions", content=big, headers=headers), 413)

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = httpx.post(url + "/v1/completions", content=chunks(), headers=headers)
    assert_openai_error(r, 413, "exceeds the limit")
    assert httpx.get(url + "/health").status_code == 200


@pytest.mark.parametrize(
    "field, value",
    [
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("logit_bias", {"42": 5}),
        ("best_of", 2),
    ],
)
def test_unsupported_fields_are_refused_by_name(server, field, value):
    url, _ = server
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2, field: value}
    err = assert_openai_error(httpx.post(url + "/v1/chat/completions", json=body), 400, field)
    assert err["param"] == field
    no_op = {
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "none",
        "logit_bias": {},
        "best_of": 1,
    }[field]
    ok = httpx.post(url + "/v1/chat/completions", json={**body, field: no_op}, timeout=30)
    assert ok.status_code == 200, ok.text


def test_completions_suffix_is_refused_by_name(server):
    url, _ = server
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "a", "suffix": "z"})
    assert assert_openai_error(r, 400, "suffix")["param"] == "suffix"


def png_header_only_cost(width: int, height: int) -> bytes:
    """A valid, highly compressible RGB PNG of width x height (built row by row, so making it
    costs no big buffer)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor, row, parts = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def test_a_huge_png_is_refused_from_its_header_without_decoding(server, monkeypatch):
    """Finding 5: 8000x8000 (192 MB decoded) is refused by the header's pixel count: no pixel
    of it is decoded."""
    url, _ = server
    decoded = []
    load = ImageFile.ImageFile.load

    def spy(image):
        decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    data = base64.b64encode(png_header_only_cost(8000, 8000)).decode()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}}
    body = {"model": "tiny", "messages": [{"role": "user", "content": [image] * 4}]}
    start = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert_openai_error(r, 400, "exceeds the limit of")
    assert (8000, 8000) not in decoded and time.monotonic() - start < 5


def test_a_symlink_inside_the_root_cannot_read_outside_it(server, peft_dir, tmp_path):
    """Finding 6: a link inside --lora-root to files outside it is refused, file by file."""
    url, root = server
    outside = tmp_path / "outside"
    shutil.copytree(peft_dir, outside)
    sneaky = root / "sneaky"
    sneaky.mkdir()
    shutil.copy(peft_dir / "adapter_config.json", sneaky)
    os.symlink(outside / "adapter_model.safetensors", sneaky / "adapter_model.safetensors")
    body = {"lora_name": "sneaky", "lora_path": str(sneaky)}
    assert_openai_error(
        httpx.post(url + "/v1/load_lora_adapter", json=body), 400, "outside the adapter root"
    )
    os.symlink(outside, root / "linked-dir")
    body = {"lora_name": "linked", "lora_path": str(root / "linked-dir")}
    assert_openai_error(httpx.post(url + "/v1/load_lora_adapter", json=body), 400, "outside")
    missing = {"lora_name": "missing", "lora_path": str(root / "nothing-here")}
    assert_openai_error(httpx.post(url + "/v1/load_lora_adapter", json=missing), 404, "not found")
    models = httpx.get(url + "/v1/models").json()["data"]
    assert not {"sneaky", "linked", "missing"} & {m["id"] for m in models}
    shutil.copytree(peft_dir, root / "fine")  # the same files inside the root load
    body = {"lora_name": "fine", "lora_path": "fine"}  # relative to the root
    assert httpx.post(url + "/v1/load_lora_adapter", json=body).status_code == 200


def test_docs_are_behind_the_api_key_or_off():
    """Finding 7."""
    with running_server("--api-key", "k3y") as (url, *_):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert_openai_error(httpx.get(url + path), 401)
            r = httpx.get(url + path, headers={"Authorization": "Bearer k3y"})
            assert r.status_code == 200, path
        assert httpx.get(url + "/health").status_code == 200
    with running_server("--disable-fastapi-docs") as (url, *_):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert_openai_error(httpx.get(url + path), 404)


class _Fatal(BaseException):
    """What no handler in the loop catches (a stand-in for a bug that ends the thread)."""


def _die() -> None:
    raise _Fatal("forced")


def test_a_dead_engine_answers_503_everywhere_and_ends_its_streams():
    with running_server("--lora-backend", "torch") as (url, _, app):
        body = {
            "model": "tiny",
            "prompt": "go",
            "max_tokens": 500,
            "stream": True,
            "ignore_eos": True,
        }
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            app.state.runner.submit(_die)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and '"engine_dead"' in rest[-2]
        assert_openai_error(httpx.get(url + "/health"), 503)
        start = time.monotonic()
        r = httpx.post(url + "/v1/completions", json={**body, "stream": False}, timeout=10)
        assert_openai_error(r, 503, "cannot serve") and time.monotonic() - start < 2


def test_sigterm_drains_in_flight_requests_then_exits():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "valora.server.cli",
            "--model-setting",
            "tiny",
            "--device",
            "cpu",
            "--num-token",
            "4096",
            "--port",
            str(port),
            "--shutdown-timeout",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_healthy(url, server, timeout=120)
        body = {
            "model": "tiny",
            "prompt": "drain",
            "max_tokens": 150,
            "stream": True,
            "ignore_eos": True,
        }
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            server.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):  # no longer admitting
                httpx.post(url + "/v1/completions", json={**body, "stream": False}, timeout=5)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2].replace(
            " ", ""
        )
        # uvicorn re-raises the captured SIGTERM once shut down, as supervisors expect
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        server.kill()


def test_steps_that_keep_failing_mark_the_engine_broken():
    """A step that raises with no request to blame fails what is in flight and the loop goes
    on; three in a row (a broken engine) end it, so /health stops saying 200."""
    with running_server("--lora-backend", "torch") as (url, engine, _):

        def broken_step():
            raise RuntimeError("device lost")

        engine.step = broken_step
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        for _ in range(2):
            assert_openai_error(httpx.post(url + "/v1/completions", json=body, timeout=10), 500)
            assert httpx.get(url + "/health").status_code == 200
        assert_openai_error(httpx.post(url + "/v1/completions", json=body, timeout=10), 500)
        deadline = time.monotonic() + 5
        while httpx.get(url + "/health").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_openai_error(httpx.post(url + "/v1/completions", json=body, timeout=10), 503)


def test_a_malformed_adapter_config_gets_400(server, peft_dir):
    url, root = server
    bad = root / "bad-config"
    shutil.copytree(peft_dir, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    for broken in ({"r": None}, {"lora_alpha": [1]}, {"rank_pattern": "x"}):
        (bad / "adapter_config.json").write_text(json.dumps({**config, **broken}))
        body = {"lora_name": "bad", "lora_path": str(bad)}
        assert_openai_error(httpx.post(url + "/v1/load_lora_adapter", json=body), 400, "bad")
    assert httpx.get(url + "/health").status_code == 200
