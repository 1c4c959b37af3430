"""The OpenAI-compatible HTTP server (FastAPI): routes, auth, errors, streaming.

``build_app(engine, config)`` returns the app; ``valora.server.cli`` runs it under uvicorn. The
engine runs in its own thread (``AsyncEngine``). Bad input answers 400 (404 for an unknown model
or adapter, 401 without the API key, 503 with ``Retry-After`` when too many requests are in
flight), always with OpenAI's error body, and never touches other requests. A client that
disconnects aborts its request, which frees its KV blocks and adapter pin.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import valora
from valora.engine import LLMEngine
from valora.sampling_params import RequestOutputKind
from valora.server.async_engine import AsyncEngine, EngineDead, EngineFailed
from valora.server.classify import add_classify_routes
from valora.server.errors import (
    BodyLimit,
    error,
    install_error_handlers,
    key_check,
)
from valora.server.lifecycle import adapter_for, last_output, until_done
from valora.server.media import MediaPolicy
from valora.server.metrics import ServerMetrics
from valora.server.prompts import chat_prompt, completion_prompt
from valora.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
    error_body,
)
from valora.server.responses import ChunkBuilder, chat_response, completion_response, new_id, sse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    served_model_name: str
    model_root: str = ""  # what /v1/models reports as the base model's root
    api_key: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_pending: int = 1024  # requests in flight before 503
    lora_root: str | None = None  # runtime adapter loads only from under here (None: disabled)
    retry_after_s: int = 1
    max_request_body_bytes: int = 32 << 20  # larger bodies get 413
    enable_docs: bool = True  # /docs, /redoc, /openapi.json (behind the API key like the rest)


def build_app(engine: LLMEngine, config: ServerConfig) -> FastAPI:
    metrics = ServerMetrics(engine)
    runner = AsyncEngine(engine, config.max_pending, metrics.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        yield
        runner.shutdown()

    app = FastAPI(
        title="VaLoRA",
        version=valora.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(key_check(config.api_key))],
    )
    app.state.engine, app.state.runner, app.state.config = engine, runner, config
    app.add_middleware(BodyLimit, max_bytes=config.max_request_body_bytes)
    install_error_handlers(app, config.retry_after_s)
    if config.enable_docs:
        _add_doc_routes(app)
    _add_info_routes(app, engine, runner, config, metrics)
    _add_adapter_routes(app, engine, runner, config)
    _add_generation_routes(app, engine, runner, config)
    add_classify_routes(app, engine, runner, config)
    return app


def _add_doc_routes(app: FastAPI) -> None:
    """FastAPI's docs as ordinary routes, so the API key guards them too."""

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="VaLoRA API")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title="VaLoRA API")


def _add_info_routes(
    app, engine: LLMEngine, runner: AsyncEngine, config: ServerConfig, metrics
) -> None:
    @app.get("/health")
    async def health():
        if not runner.is_alive:
            return error(503, "the engine has stopped", "engine_dead")
        if runner.is_draining:  # load balancers: take this replica out of rotation
            return error(503, "the server is shutting down", "overloaded")
        return Response(status_code=200)

    @app.get("/version")
    async def version():
        return {"version": valora.__version__}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        base = config.served_model_name
        cards = [_card(base, config.model_root or base, None, created, engine)]
        for name, description in engine.adapters().items():
            cards.append(_card(name, description, base, created, engine))
        return {"object": "list", "data": cards}


def _card(model_id: str, root: str, parent: str | None, created: int, engine) -> dict:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "valora",
        "root": root,
        "parent": parent,
        "max_model_len": engine.max_model_len,
    }


def _add_adapter_routes(app, engine: LLMEngine, runner: AsyncEngine, config) -> None:
    @app.post("/v1/load_lora_adapter")
    async def load_adapter(body: LoadLoRAAdapterRequest):
        if engine.config.lora is None:
            return error(400, "this server runs without LoRA (start it with --enable-lora)")
        if config.lora_root is None:
            return error(400, "runtime adapter loading is disabled (start with --lora-root DIR)")
        if body.lora_name == config.served_model_name:
            return error(400, f"{body.lora_name!r} is the base model's name", param="lora_name")
        root = Path(config.lora_root).resolve()
        path = Path(root, body.lora_path).resolve()  # relative paths are under the root
        if not path.is_relative_to(root):
            return error(
                400,
                f"adapter path {body.lora_path!r} is outside the allowed root",
                param="lora_path",
            )
        try:  # every file is resolved again (symlinks) and must stay under the root
            version = await runner.call(engine.load_adapter, body.lora_name, str(path), root)
        except FileNotFoundError as exc:
            return error(404, f"cannot load adapter {body.lora_name!r}: {exc}", param="lora_path")
        except (OSError, ValueError) as exc:
            return error(400, f"cannot load adapter {body.lora_name!r}: {exc}", param="lora_path")
        verb = "added" if version == 1 else f"reloaded (version {version})"
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' {verb} successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(body: UnloadLoRAAdapterRequest):
        if not engine.has_adapter(body.lora_name):
            return error(404, f"adapter {body.lora_name!r} is not loaded", param="lora_name")
        # requests already running on it finish on its weights; new ones cannot name it
        try:
            await runner.call(engine.unload_adapter, body.lora_name)
        except KeyError:  # unloaded by a concurrent call
            return error(404, f"adapter {body.lora_name!r} is not loaded", param="lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def _add_generation_routes(app, engine: LLMEngine, runner: AsyncEngine, config) -> None:
    tokenizer = engine.tokenizer

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        adapter = adapter_for(engine, config, body.model)
        prompt = await chat_prompt(body.messages, engine, config.media, body.mm_processor_kwargs)
        params = body.sampling_params(body.requested_max_tokens(), body.requested_logprobs())
        return await _generate(request, runner, "chat", body, prompt, params, adapter, tokenizer)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = adapter_for(engine, config, body.model)
        prompt = completion_prompt(body)
        params = body.sampling_params(
            body.max_tokens if body.max_tokens is not None else 16, body.logprobs
        )
        return await _generate(
            request, runner, "completion", body, prompt, params, adapter, tokenizer
        )


async def _generate(request, runner, kind, body, prompt, params, adapter, tokenizer):
    request_id = new_id("chatcmpl" if kind == "chat" else "cmpl")
    if body.stream:
        params = replace(params, output_kind=RequestOutputKind.DELTA)
        outputs = runner.generate(request_id, prompt, params, adapter)
        first = await anext(outputs)  # errors before the stream starts become 4xx / 503
        builder = ChunkBuilder(kind, body.model, request_id, tokenizer)
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _stream(builder, first, outputs, usage), media_type="text/event-stream"
        )
    params = replace(params, output_kind=RequestOutputKind.FINAL_ONLY)
    outputs = runner.generate(request_id, prompt, params, adapter)
    final = await until_done(request, last_output(outputs))
    if final is None:  # the client went away; nothing to answer
        return Response(status_code=499)
    if kind == "chat":
        return chat_response(final, body.model, request_id, tokenizer)
    echo = tokenizer.decode(final.prompt_token_ids) if getattr(body, "echo", False) else ""
    return completion_response(final, body.model, request_id, tokenizer, echo)


async def _stream(builder: ChunkBuilder, first, outputs, include_usage: bool):
    out = first
    try:
        if builder.kind == "chat":
            yield builder.role()
        while True:
            chunk = builder.delta(out)
            if chunk is not None:
                yield chunk
            if out.finished:
                break
            out = await anext(outputs)
        if include_usage:
            yield builder.usage(out)
    except EngineFailed as exc:
        yield sse(error_body(str(exc), "internal_error", 500))
    except EngineDead as exc:
        yield sse(error_body(f"the server cannot serve requests: {exc}", "engine_dead", 503))
    except Exception as exc:  # building a chunk failed: end this stream with an error chunk
        log.exception("stream %s failed", builder.id)
        yield sse(
            error_body(f"internal server error ({type(exc).__name__})", "internal_error", 500)
        )
    finally:
        await outputs.aclose()  # a disconnect lands here: the request is aborted
    yield "data: [DONE]\n\n"
