"""One error shape for every route: OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

Every status the server answers with besides 2xx goes through here: unknown routes (404), wrong
methods (405), bodies that do not parse or validate (400), too large (413), bad values (400),
unknown models (404), missing keys (401), overload and a stopped engine (503), a request that
failed in a step and anything unexpected (500, without a traceback or anybody else's text).
"""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from valora.server.async_engine import EngineDead, EngineFailed, EngineOverloaded
from valora.server.protocol import error_body

log = logging.getLogger(__name__)

_KIND_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "overloaded",
}


class ModelNotFound(Exception):
    pass


class Unauthorized(Exception):
    pass


def error(
    status: int, message: str, kind: str | None = None, headers=None, param: str | None = None
) -> JSONResponse:
    kind = kind or _KIND_OF_STATUS.get(status, "internal_error")
    return JSONResponse(
        error_body(message, kind, status, param), status_code=status, headers=headers
    )


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    overloaded_headers = {"Retry-After": str(retry_after_s)}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(
            400,
            f"invalid request: {where or 'body'}: {first.get('msg', 'invalid')}",
            param=where or None,
        )

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError):
        return error(400, str(exc), param=getattr(exc, "param", None))

    @app.exception_handler(ModelNotFound)
    async def not_found(request: Request, exc: ModelNotFound):
        return error(404, str(exc), param="model")

    @app.exception_handler(EngineOverloaded)
    async def overloaded(request: Request, exc: EngineOverloaded):
        return error(503, f"server overloaded ({exc}); retry later", headers=overloaded_headers)

    @app.exception_handler(EngineDead)
    async def dead(request: Request, exc: EngineDead):
        return error(503, f"the server cannot serve requests: {exc}", "engine_dead")

    @app.exception_handler(EngineFailed)
    async def failed(request: Request, exc: EngineFailed):
        return error(500, str(exc), "internal_error")

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized):
        return error(401, "invalid or missing API key")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal server error ({type(exc).__name__})", "internal_error")


def key_check(api_key: str | None, open_paths: frozenset[str] = frozenset({"/health"})):
    """A dependency of every route but ``open_paths`` (not an HTTP middleware: those wrap
    streaming responses in an extra task). The comparison takes constant time."""

    async def check(request: Request) -> None:
        if api_key is None or request.url.path in open_paths:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise Unauthorized()

    return check


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, by its Content-Length before
    anything is read, or (chunked bodies) as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await error(413, self._message())(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # caught by the app's HTTPException handler
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"
