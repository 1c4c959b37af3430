"""The engine behind an asyncio server: one background thread steps ``LLMEngine``; handlers talk
to it through a command queue and get their outputs on per-request asyncio queues.

Invariants
- Only the engine thread touches the ``LLMEngine`` (commands run there, between steps), except
  ``process_prompt`` (tokenizer and image processor, no engine state), which worker threads
  run so a burst of image requests does not stall the steps.
- A request added to the engine ends in exactly one of: a finished output, or an abort (its
  consumer went away: disconnect or cancel), so its KV blocks and adapter pin are always freed.
- At most ``max_pending`` requests are in flight; one more gets ``EngineOverloaded`` (-> 503).
- An exception inside ``step`` fails every in-flight request and aborts it; the loop goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from valora.engine import LLMEngine
from valora.request import RequestOutput

log = logging.getLogger(__name__)


class EngineOverloaded(Exception):
    """Too many requests in flight; retry later."""


class EngineFailed(Exception):
    """The engine raised while computing this request's step."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_pending: int = 1024,
                 on_finished: Callable[[RequestOutput], None] | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.max_pending = max_pending
        self.on_finished = on_finished  # metrics hook, called in the engine thread
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._num_pending = 0  # touched only on the event loop's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="valora-engine", daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    @property
    def num_pending(self) -> int:
        return self._num_pending

    # ---- calls into the engine thread -----------------------------------------------------
    def submit(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the engine thread between steps, without waiting for it."""
        self._commands.put((fn, args, None))
        self._wake.set()

    async def call(self, fn: Callable, *args) -> Any:
        """Run ``fn(*args)`` on the engine thread between steps; its result or exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, args, future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    async def generate(self, request_id: str, prompt, params, adapter: str | None
                       ) -> AsyncIterator[RequestOutput]:  # fmt: skip
        """Outputs of one request as the engine produces them (per ``params.output_kind``).
        Raises ``EngineOverloaded`` before adding, ValueError for a bad request."""
        if self._num_pending >= self.max_pending:
            raise EngineOverloaded(f"{self._num_pending} requests in flight")
        self._num_pending += 1
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        finished = False
        try:
            # tokenizing and image processing run in a worker thread, beside the engine's steps
            processed = await asyncio.to_thread(self.engine.process_prompt, prompt)
            await self.call(self._add, request_id, processed, params, adapter)
            while not finished:
                out = await outputs.get()
                if isinstance(out, Exception):
                    finished = True  # the engine thread already aborted it
                    raise out
                finished = out.finished
                yield out
        finally:
            self._num_pending -= 1
            self._streams.pop(request_id, None)
            if not finished:  # the consumer left (disconnect, cancel): free everything
                self.submit(self.engine.abort, request_id)

    # ---- the engine thread ----------------------------------------------------------------
    def _add(self, request_id: str, prompt, params, adapter: str | None) -> None:
        """Add, refusing a ``max_tokens`` that cannot fit beside the prompt (as vLLM's API does;
        the offline engine would stop at the context length instead)."""
        request = self.engine.add_request(request_id, prompt, params, adapter)
        max_len = self.engine.scheduler.config.max_model_len
        if (
            params.max_tokens is not None
            and request.num_prompt_tokens + params.max_tokens > max_len
        ):
            self.engine.abort(request_id)
            raise ValueError(
                f"this model's maximum context length is {max_len} tokens; the prompt has "
                f"{request.num_prompt_tokens} and max_tokens asks for {params.max_tokens} more"
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._run_commands()
            if not self.engine.has_unfinished():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug: fail what is in flight, keep serving
                log.exception("engine step failed")
                self._fail_all(exc)
                continue
            for out in outputs:
                self._deliver(out.request_id, out)
                if out.finished and self.on_finished is not None:
                    self.on_finished(out)

    def _run_commands(self) -> None:
        while True:
            try:
                fn, args, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                result = fn(*args)
            except Exception as exc:
                if future is not None:
                    future.set_exception(exc)
                continue
            if future is not None:
                future.set_result(result)

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, outputs = stream
            loop.call_soon_threadsafe(outputs.put_nowait, item)

    def _fail_all(self, exc: Exception) -> None:
        for request_id in list(self._streams):
            self.engine.abort(request_id)
            self._deliver(request_id, EngineFailed(f"engine error: {exc}"))
