"""The one place that maps errors to HTTP: status codes here, body shapes per dialect.

Each dialect registers a renderer for its path prefix; an error raised anywhere while
serving a path is rendered the way that dialect's clients expect. Nothing internal (paths,
tracebacks, SQL) ever reaches a response body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from huabu.errors import (
    AuthFailed,
    Cancelled,
    GenerationFailed,
    HuabuError,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    Overloaded,
    TaskFailed,
    TaskTimedOut,
    TooLarge,
    invalid_field,
)

log = logging.getLogger("huabu.web")

#: Most specific first: TooLarge is an InvalidRequest with its own status.
_STATUS: tuple[tuple[type[HuabuError], int], ...] = (
    (TooLarge, 413),
    (InvalidRequest, 400),
    (AuthFailed, 401),
    (NotFound, 404),
    (Overloaded, 429),
    (ModelUnavailable, 503),
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


class ErrorRenderers:
    """Path prefix → renderer; the longest matching prefix wins, huabu's own shape otherwise."""

    def __init__(self) -> None:
        self._by_prefix: list[tuple[str, Renderer]] = []

    def register(self, prefix: str, renderer: Renderer) -> None:
        self._by_prefix.append((prefix, renderer))
        self._by_prefix.sort(key=lambda item: len(item[0]), reverse=True)

    def for_path(self, path: str) -> Renderer:
        for prefix, renderer in self._by_prefix:
            if path.startswith(prefix):
                return renderer
        return render_native

    def response(self, path: str, error: HuabuError) -> Response:
        status = status_for(error)
        response = self.for_path(path)(error, status)
        if isinstance(error, Overloaded):
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
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        error = HuabuError("internal server error; the server log has the details")
        return renderers.for_path(request.url.path)(error, 500)
