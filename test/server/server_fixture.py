"""A real uvicorn server on a loopback port, in a background thread, for the server tests."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn

from valora.server.cli import build_parser, build_server

# small limits the reliability, hardening and fuzz servers share: short generations, 1 MiB bodies
SMALL_LIMITS = (
    "--lora-backend",
    "torch",
    "--max-model-len",
    "96",
    "--max-request-body-bytes",
    str(1 << 20),
)


@contextmanager
def running_server(*cli_args: str):
    """Yields (base_url, engine, app); the server stops on exit."""
    args = build_parser().parse_args(
        [
            "--model-setting",
            "tiny",
            "--device",
            "cpu",
            "--num-token",
            "8192",
            "--port",
            "0",
            *cli_args,
        ]
    )
    app, engine, _ = build_server(args)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", engine, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def assert_idle(url: str, timeout: float = 20) -> None:
    """Alive, and once quiet nothing is held: no request, KV block or adapter pin."""
    assert httpx.get(url + "/health").status_code == 200
    names = (
        "valora_num_requests_running",
        "valora_num_requests_waiting",
        "valora_kv_blocks_in_use",
        "valora_lora_request_pins",
    )
    deadline = time.monotonic() + timeout
    while any(metric(url, n) for n in names):
        assert time.monotonic() < deadline, {n: metric(url, n) for n in names}
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
