"""Send a workload at its arrival times and time each streamed output (asyncio).

Two senders behind one interface, ``await sender(spec, clock) -> RequestResult``:

- ``HttpSender``: the OpenAI-compatible server. ``POST /v1/chat/completions`` with
  ``stream: true`` and ``stream_options.include_usage`` (the server's token counts), images as
  base64 data URLs, greedy, ``ignore_eos`` so every request produces its ``max_tokens``;
  ``model`` is the adapter's name, or the base model's id from ``GET /v1/models``.
- ``EngineSender``: an in-process ``LLMEngine`` behind ``AsyncEngine`` (no HTTP): the same chat
  prompt, DELTA outputs.

A request with a video clip carries it before its text: over HTTP as an mp4 data URL
(``video_url``, sampled at the clip's own fps, so every frame is kept), in process as its
decoded frames. A classify request (``spec.classify``: vat) goes to the adapter's task head:
``POST /v1/classify`` (not streamed), or ``AsyncEngine.generate(..., classify=True)``; its
result has no chunks, its ``label`` and ``end_s`` at the answer (``replay.classify``).

Both also read the engine's step totals (``await sender.engine_stats()``: steps, step seconds
and tokens per LoRA mode, switches; ``valora.engine_stats``), from ``GET /metrics`` or the engine;
a run diffs the totals taken before and after it.

A chunk time is taken when output text arrives (vLLM's benchmark convention). ``replay`` starts
every request at ``start + arrival_s`` regardless of how the earlier ones are doing (open loop).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path

from tqdm import tqdm

from replay.classify import classify_body, take_classification, video_data_url
from replay.metrics import RequestResult
from replay.workload import RequestSpec

Sender = Callable[[RequestSpec, float], Awaitable[RequestResult]]


async def replay(
    specs: list[RequestSpec], sender: Sender, progress: bool = True
) -> tuple[list[RequestResult], float]:
    """Every request sent at its arrival time; -> (results in spec order, wall seconds)."""
    start = time.perf_counter()
    bar = tqdm(total=len(specs), desc="requests", unit="req", disable=not progress)

    async def one(spec: RequestSpec) -> RequestResult:
        await asyncio.sleep(max(0.0, start + spec.arrival_s - time.perf_counter()))
        result = await sender(spec, start)
        bar.update(1)
        return result

    results = await asyncio.gather(*(one(spec) for spec in specs))
    bar.close()
    return list(results), time.perf_counter() - start


def _new_result(spec: RequestSpec, start: float) -> RequestResult:
    return RequestResult(
        request_id=spec.request_id,
        adapter=spec.adapter,
        task=spec.task,
        scheduled_s=spec.arrival_s,
        send_s=time.perf_counter() - start,
        chunk_s=[],
        end_s=None,
        prompt_tokens=0,
        output_tokens=0,
        num_images=len(spec.image_paths),
        success=False,
        classify=spec.classify,
        video_frames=spec.video.frames if spec.video else 0,
    )


@cache
def image_data_url(path: str) -> str:
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    mime = "jpeg" if suffix in ("jpg", "jpeg") else suffix
    return f"data:image/{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def chat_messages(spec: RequestSpec) -> list[dict]:
    """One user turn: the images and the video first, then the text (Qwen2-VL's usual order)."""
    parts = [
        {"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in spec.image_paths
    ]
    if spec.video is not None:
        parts.append({"type": "video_url", "video_url": {"url": video_data_url(spec.video.path)}})
    parts.append({"type": "text", "text": spec.prompt})
    return [{"role": "user", "content": parts}]


class HttpSender:
    def __init__(self, server: str, timeout_s: float = 600.0) -> None:
        import httpx

        self.server = server.rstrip("/")
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self.base_model: str | None = None

    async def connect(self) -> None:
        """Wait for the server (up to 10 minutes: model load, graph capture), then read the
        base model's id."""
        deadline = time.monotonic() + 600
        while True:
            try:
                response = await self.client.get(f"{self.server}/v1/models")
                response.raise_for_status()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
        cards = response.json()["data"]
        self.base_model = next(c["id"] for c in cards if c.get("parent") is None)

    async def close(self) -> None:
        await self.client.aclose()

    async def engine_stats(self) -> dict | None:
        """The step totals from the server's Prometheus text; None if it has no /metrics."""
        try:
            response = await self.client.get(f"{self.server}/metrics")
            response.raise_for_status()
        except Exception:  # noqa: BLE001 (optional: a server without metrics still replays)
            return None
        return stats_from_prometheus(response.text)

    def body(self, spec: RequestSpec) -> dict:
        return {
            "model": spec.adapter or self.base_model,
            "messages": chat_messages(spec),
            "max_tokens": spec.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def __call__(self, spec: RequestSpec, start: float) -> RequestResult:
        result = _new_result(spec, start)
        try:
            await (self._classify if spec.classify else self._stream)(spec, result, start)
            result.end_s = time.perf_counter() - start
            result.success = True
        except Exception as e:  # noqa: BLE001 (recorded: a failed request is a result)
            result.error = f"{type(e).__name__}: {e}"
        _fill_chunkless(result)
        return result

    async def _stream(self, spec: RequestSpec, result: RequestResult, start: float) -> None:
        async with self.client.stream(
            "POST", f"{self.server}/v1/chat/completions", json=self.body(spec)
        ) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")
                raise RuntimeError(f"HTTP {response.status_code}: {detail[:300]}")
            async for line in response.aiter_lines():
                if _take_event(line, result, start):
                    return
        raise RuntimeError("the stream ended without [DONE]")

    async def _classify(self, spec: RequestSpec, result: RequestResult, start: float) -> None:
        body = classify_body(spec, chat_messages(spec))
        response = await self.client.post(f"{self.server}/v1/classify", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        take_classification(result, response.json())


def stats_from_prometheus(text: str) -> dict:
    """``valora.engine_stats`` snapshot fields from the exposition text (counters by mode)."""
    from prometheus_client.parser import text_string_to_metric_families

    stats: dict = {
        "steps": {},
        "step_seconds": {},
        "step_tokens": {},
        "switches": 0,
        "switch_seconds": 0.0,
    }
    by_mode = {
        "valora_steps": "steps",
        "valora_step_seconds": "step_seconds",
        "valora_step_tokens": "step_tokens",
    }
    totals = {"valora_mode_switches": "switches", "valora_switch_seconds": "switch_seconds"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if family.name in by_mode:
                stats[by_mode[family.name]][sample.labels["mode"]] = sample.value
            elif family.name in totals:
                stats[totals[family.name]] = sample.value
    return stats


def _take_event(line: str, result: RequestResult, start: float) -> bool:
    """Record one SSE line; True at ``[DONE]``."""
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if data == "[DONE]":
        return True
    event = json.loads(data)
    if "error" in event:
        raise RuntimeError(str(event["error"]))
    for choice in event.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            result.chunk_s.append(time.perf_counter() - start)
    usage = event.get("usage")
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens", 0)
        result.output_tokens = usage.get("completion_tokens", 0)
    return False


def _fill_chunkless(result: RequestResult) -> None:
    """A finished request whose tokens decoded to no text (one special token, say) still has
    its first token at the end; without usage, count the chunks. A classify request has none."""
    if result.classify:
        return
    if result.success and not result.chunk_s and result.end_s is not None:
        result.chunk_s.append(result.end_s)
    if result.success and not result.output_tokens:
        result.output_tokens = len(result.chunk_s)


def engine_prompt(tokenizer, spec: RequestSpec) -> dict:
    """The engine's prompt for a request: the chat template over its images, video and text
    (the clip decoded here: every frame, no fps sampling)."""
    from PIL import Image

    from replay.clips import read_clip

    parts = [{"type": "image"} for _ in spec.image_paths]
    parts += [{"type": "video"}] if spec.video is not None else []
    parts.append({"type": "text", "text": spec.prompt})
    text = tokenizer.apply_chat_template([{"role": "user", "content": parts}])
    images = [Image.open(p).convert("RGB") for p in spec.image_paths]
    data = {"image": images}
    if spec.video is not None:
        data["video"] = [read_clip(spec.video.path)]
    return {"prompt": text, "multi_modal_data": data}


class EngineSender:
    """The in-process engine: requests go straight to ``AsyncEngine`` (no HTTP)."""

    def __init__(self, engine) -> None:
        from valora.server.async_engine import AsyncEngine

        self.async_engine = AsyncEngine(engine)
        self.tokenizer = engine.tokenizer
        self.async_engine.start()

    async def close(self) -> None:
        self.async_engine.shutdown()

    async def engine_stats(self) -> dict:
        return self.async_engine.engine.stats.snapshot()

    def prompt(self, spec: RequestSpec) -> dict:
        return engine_prompt(self.tokenizer, spec)

    async def __call__(self, spec: RequestSpec, start: float) -> RequestResult:
        from valora.sampling_params import RequestOutputKind, SamplingParams

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max(1, spec.max_tokens),  # a classify request's are ignored
            ignore_eos=True,
            output_kind=RequestOutputKind.DELTA,
        )
        result = _new_result(spec, start)
        try:
            prompt = await asyncio.to_thread(self.prompt, spec)
            stream = self.async_engine.generate(
                spec.request_id, prompt, params, spec.adapter, classify=spec.classify
            )
            async for out in stream:
                if out.error:
                    raise RuntimeError(out.error)
                if out.classification is not None:
                    result.label = out.classification.label
                if out.outputs and out.outputs[0].token_ids:
                    result.chunk_s.append(time.perf_counter() - start)
                    result.output_tokens += len(out.outputs[0].token_ids)
                result.prompt_tokens = len(out.prompt_token_ids)
            result.end_s = time.perf_counter() - start
            result.success = True
        except Exception as e:  # noqa: BLE001 (recorded: a failed request is a result)
            result.error = f"{type(e).__name__}: {e}"
        return result
