"""A real uvicorn server on a loopback port, in a background thread, for the server tests."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import uvicorn

from valora.server.cli import build_parser, build_server


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
