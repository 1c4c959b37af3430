"""What every generating route shares: which adapter a body's ``model`` names, and waiting for a
request's final output while watching for the client to disconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request

from valora.server.errors import ModelNotFound


def adapter_for(engine, config, model: str) -> str | None:
    """The adapter a request's ``model`` names (None: the base model); ``ModelNotFound`` (404)
    for anything else."""
    if model in (config.served_model_name, config.model_root):
        return None
    if engine.has_adapter(model):
        return model
    raise ModelNotFound(f"the model {model!r} does not exist")


async def last_output(outputs: AsyncIterator):
    last = None
    async for out in outputs:
        last = out
    return last


async def until_done(request: Request, work: Awaitable):
    """``work``'s result, or None if the client disconnected first (``work`` is cancelled,
    which runs each request's cleanup: the request is aborted)."""

    async def disconnected():  # the body is read: the next message is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, listener = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
