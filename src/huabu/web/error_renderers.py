"""The one place that maps errors to HTTP: status codes here, body shapes per dialect.

Each dialect registers a renderer for its path prefix; an error raised anywhere while
serving a path is rendered the way that dialect's clients expect. Nothing internal (paths,
tracebacks, SQL) ever reaches a response body.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from huabu.errors import (
    AuthFailed,
    Cancelled,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    GenerationFailed,
    HuabuError,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    Overloaded,
    StorageFull,
    StorageUnavailable,
    TaskFailed,
    TaskTimedOut,
    TooLarge,
    invalid_field,
)

log = logging.getLogger("huabu.web")

#: Most specific first: TooLarge is an InvalidRequest with its own status.
_STATUS: tuple[tuple[type[HuabuError], int], ...] = (
    (TooLarge, 413),
    (Conflict, 409),
    (InvalidRequest, 400),
    (AuthFailed, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Overloaded, 429),
    (ModelUnavailable, 503),
    (DatabaseUnavailable, 503),
    (StorageUnavailable, 503),
    (StorageFull, 507),
    (Cancelled, 409),
    (GenerationFailed, 500),
    (TaskFailed, 500),
    (TaskTimedOut, 504),
)

#: Renders one error as a dialect's response body (the status is decided here, not there).
Renderer = Callable[[HuabuError, int], Response]


def status_for(error: HuabuError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_kind(error: HuabuError) -> str:
    """A stable machine-readable name: ``invalid_request``, ``not_found``, …"""
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def render_native(error: HuabuError, status: int) -> Response:
    body: dict[str, object] = {"type": error_kind(error), "message": error.message}
    if isinstance(error, InvalidRequest):
        body["param"] = error.param
    if error.task_id is not None:
        body["task_id"] = error.task_id
    return JSONResponse({"error": body}, status_code=status)


class NativeErrorDetail(BaseModel):
    type: str = Field(description="invalid_request, auth_failed, not_found, overloaded, …")
    message: str
    param: str | None = Field(default=None, description="The field at fault (bad input only).")
    task_id: str | None = Field(default=None, description="The task, once one was queued.")


class NativeError(BaseModel):
    """huabu's own error body."""

    error: NativeErrorDetail


class ErrorRenderers:
    """Path prefix → renderer and the error shape it renders (for the OpenAPI document); the
    longest matching prefix wins, huabu's own shape otherwise."""

    def __init__(self) -> None:
        self._by_prefix: list[tuple[str, Renderer, type[BaseModel]]] = []

    def register(self, prefix: str, renderer: Renderer, shape: type[BaseModel]) -> None:
        self._by_prefix.append((prefix, renderer, shape))
        self._by_prefix.sort(key=lambda item: len(item[0]), reverse=True)

    def _entry(self, path: str) -> tuple[Renderer, type[BaseModel]]:
        for prefix, renderer, shape in self._by_prefix:
            if path.startswith(prefix):
                return renderer, shape
        return render_native, NativeError

    def for_path(self, path: str) -> Renderer:
        return self._entry(path)[0]

    def shape_for(self, path: str) -> type[BaseModel]:
        return self._entry(path)[1]

    def response(self, path: str, error: HuabuError) -> Response:
        status = status_for(error)
        response = self.for_path(path)(error, status)
        if isinstance(error, Overloaded | DatabaseUnavailable):
            response.headers["Retry-After"] = str(error.retry_after)
        if isinstance(error, AuthFailed):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """FastAPI's validation error as ours, naming the first offending field."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return InvalidRequest("the request body is not valid JSON", param=None)
    return invalid_field(first)


def install(app: FastAPI, renderers: ErrorRenderers) -> None:
    @app.exception_handler(HuabuError)
    async def huabu_error(request: Request, exc: HuabuError) -> Response:
        return renderers.response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return renderers.response(request.url.path, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return renderers.response(request.url.path, NotFound(f"no endpoint {request.url.path}"))
        error = HuabuError(str(exc.detail))
        response = renderers.for_path(request.url.path)(error, exc.status_code)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return response


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path. Starlette's 405 names only the methods of
    the first route whose path matched, and a path here may have a route per method."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] is Match.FULL
            for route in app.router.routes
        )
    ]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class LastResort:
    """ASGI middleware for what no handler knew, which is a bug: the dialect's 500 body with an
    error id, the traceback logged once under that id, and the connection kept open for the
    client's next request (Starlette's own last handler re-raises, and the server then drops
    the connection)."""

    def __init__(self, app: ASGIApp, renderers: ErrorRenderers) -> None:
        self.app = app
        self.renderers = renderers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            error_id = secrets.token_hex(6)
            log.error("error %s on %s %s", error_id, scope["method"], scope["path"], exc_info=exc)
            if started:  # half an answer went out: nothing sane can follow it
                raise
            error = HuabuError(
                f"internal server error (error id {error_id}); the server log has the details"
            )
            response = self.renderers.for_path(scope["path"])(error, 500)
            await response(scope, receive, send)
