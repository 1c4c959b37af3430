"""The engine behind an asyncio server: one background thread steps ``LLMEngine``; handlers talk
to it through a command queue and get their outputs on per-request asyncio queues.

Invariants
- Only the engine thread touches the ``LLMEngine`` (commands run there, between steps), except
  ``process_prompt`` (tokenizer and image processor, no engine state), which worker threads
  run so a burst of image requests does not stall the steps.
- A command whose caller already gave up (its future cancelled) is not run; a request added by a
  command whose caller left while it ran is aborted by the caller's cleanup (commands run in
  order, so the abort follows the add).
- A request added to the engine ends in exactly one of: a finished output, an error output (it
  failed inside a step: only it), or an abort (its consumer went away), so its KV blocks and
  adapter pin are always freed.
- At most ``max_pending`` requests are in flight; one more gets ``EngineOverloaded`` (-> 503), as
  does every new request once draining began (shutdown).
- A step that raises (no single request to blame) fails every in-flight request and the loop
  goes on; ``MAX_STEP_FAILURES_IN_A_ROW`` such steps end it (a broken engine, e.g. a GPU in an
  error state, must not look healthy).
- The loop never dies silently: if it ends (a bug it could not contain), ``is_alive`` turns
  False (-> /health 503), every waiting caller and stream gets ``EngineDead``, and so does every
  later call.
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

# steps that raise (every in-flight request failed, no single one to blame) before the engine
# counts as broken and the loop ends (/health 503, so a supervisor restarts the server)
MAX_STEP_FAILURES_IN_A_ROW = 3


class EngineOverloaded(Exception):
    """Too many requests in flight (or the server is shutting down); retry later."""


class EngineFailed(Exception):
    """This request failed inside the engine's step (only this one)."""


class EngineDead(Exception):
    """The engine loop has stopped: nothing can be served any more."""


class AsyncEngine:
    def __init__(
        self,
        engine: LLMEngine,
        max_pending: int = 1024,
        on_finished: Callable[[RequestOutput], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self.on_finished = on_finished  # metrics hook, called in the engine thread
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._num_pending = 0  # touched only on the event loop's thread
        self._stop = threading.Event()
        self._draining = False
        self._death: BaseException | None = None  # why the loop ended (None: running)
        self._step_failures = 0  # steps in a row that raised
        self._thread = threading.Thread(target=self._run, name="valora-engine", daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def drain(self) -> None:
        """Stop admitting: every new request gets 503 while in-flight ones finish."""
        self._draining = True

    def shutdown(self) -> None:
        """Stop the loop; requests still in flight get ``EngineDead`` and are aborted."""
        self._draining = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._death is None and not self._stop.is_set()

    @property
    def is_draining(self) -> bool:
        return self._draining

    @property
    def num_pending(self) -> int:
        return self._num_pending

    def _check_alive(self) -> None:
        if self._death is not None:
            raise EngineDead(f"the engine has stopped ({type(self._death).__name__})")

    # ---- calls into the engine thread -----------------------------------------------------
    def submit(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the engine thread between steps, without waiting for it."""
        self._commands.put((fn, args, None))
        self._wake.set()

    async def call(self, fn: Callable, *args) -> Any:
        """Run ``fn(*args)`` on the engine thread between steps; its result or exception."""
        self._check_alive()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, args, future))
        self._wake.set()
        if self._death is not None:  # died while we queued: nobody else will answer it
            self._fail_commands()
        return await asyncio.wrap_future(future)

    async def generate(
        self, request_id: str, prompt, params, adapter: str | None, classify: bool = False
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as the engine produces them (per ``params.output_kind``;
        ``classify``: one final output with the task head's answer). Raises
        ``EngineOverloaded`` / ``EngineDead`` before adding, ValueError for a bad request,
        ``EngineFailed`` if the request fails in a step."""
        self._check_alive()
        if self._draining:
            raise EngineOverloaded("the server is shutting down")
        if self._num_pending >= self.max_pending:
            raise EngineOverloaded(f"{self._num_pending} requests in flight")
        self._num_pending += 1
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        finished = False
        try:
            # tokenizing and image processing run in a worker thread, beside the engine's steps
            processed = await asyncio.to_thread(self.engine.process_prompt, prompt)
            await self.call(self._add, request_id, processed, params, adapter, classify)
            while not finished:
                out = await outputs.get()
                if isinstance(out, Exception):  # the cleanup still aborts it: an error sent
                    raise out  # while its add was queued must not leave it running
                finished = out.finished
                yield out
        finally:
            self._num_pending -= 1
            self._streams.pop(request_id, None)
            if not finished:  # the consumer left (disconnect, cancel): free everything
                self.submit(self.engine.abort, request_id)

    # ---- the engine thread ----------------------------------------------------------------
    def _add(self, request_id: str, prompt, params, adapter: str | None, classify: bool) -> None:
        """Add, refusing a ``max_tokens`` that cannot fit beside the prompt (as vLLM's API does;
        the offline engine would stop at the context length instead)."""
        max_tokens = None if classify else params.max_tokens
        request = self.engine.add_request(request_id, prompt, params, adapter, classify)
        max_len = self.engine.max_model_len
        if max_tokens is not None and request.num_prompt_tokens + max_tokens > max_len:
            self.engine.abort(request_id)
            raise ValueError(
                f"this model's maximum context length is {max_len} tokens; the prompt has "
                f"{request.num_prompt_tokens} and max_tokens asks for {max_tokens} more"
            )

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._run_commands()
                self._step()
        except BaseException as exc:  # a bug the loop could not contain: say so, loudly
            self._death = exc
            log.critical("the engine loop died; the server can no longer serve", exc_info=True)
        finally:
            self._death = self._death or EngineDead("the engine was shut down")
            self._fail_everything()

    def _step(self) -> None:
        if not self.engine.has_unfinished():
            self._wake.wait(0.05)
            self._wake.clear()
            return
        try:
            outputs = self.engine.step()
        except Exception as exc:  # not one request's fault: end what is in flight, go on
            self._step_failures += 1
            log.exception("engine step failed (%d in a row)", self._step_failures)
            self._fail_all(EngineFailed(f"internal engine error ({type(exc).__name__})"))
            if self._step_failures >= MAX_STEP_FAILURES_IN_A_ROW:  # broken: say so (/health)
                raise
            return
        self._step_failures = 0
        for out in outputs:
            if out.error is not None:
                self._deliver(out.request_id, EngineFailed(out.error))
            else:
                self._deliver(out.request_id, out)
            if out.finished and self.on_finished is not None:
                try:
                    self.on_finished(out)
                except Exception:
                    log.exception("the on_finished hook failed")

    def _run_commands(self) -> None:
        while True:
            try:
                fn, args, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future is not None and not future.set_running_or_notify_cancel():
                continue  # its caller gave up before it ran: do not run it
            try:
                result = fn(*args)
            except Exception as exc:
                if future is None:
                    log.exception("engine command %s failed", getattr(fn, "__name__", fn))
                else:
                    future.set_exception(exc)
                continue
            if future is not None:
                future.set_result(result)

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, outputs = stream
            try:
                loop.call_soon_threadsafe(outputs.put_nowait, item)
            except RuntimeError:  # its event loop is closed: nobody is listening
                pass

    def _fail_all(self, error: Exception) -> None:
        """End every unfinished request (a step failed for no single request's fault)."""
        for request_id in self.engine.abort_all():
            self._deliver(request_id, error)
        for request_id in list(self._streams):  # e.g. still being added
            self._deliver(request_id, error)

    def _fail_everything(self) -> None:
        """The loop ended: answer every waiting command and stream with ``EngineDead``."""
        dead = EngineDead(f"the engine has stopped ({type(self._death).__name__})")
        self._fail_commands()
        for request_id in list(self._streams):
            self._deliver(request_id, dead)
        try:
            self.engine.abort_all()
        except Exception:
            log.exception("aborting the remaining requests failed")

    def _fail_commands(self) -> None:
        dead = EngineDead("the engine has stopped")
        while True:
            try:
                _, _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future is not None and future.set_running_or_notify_cancel():
                future.set_exception(dead)
