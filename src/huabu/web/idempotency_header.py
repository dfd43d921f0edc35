"""The ``Idempotency-Key`` header: ASGI middleware that hands a POST's key and the
fingerprint of its body to the submitter (``tasks.idempotency``)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from huabu.errors import InvalidRequest
from huabu.tasks.idempotency import CURRENT, HEADER, IdempotentRequest, parse
from huabu.web.error_renderers import ErrorRenderers

_NAME = HEADER.lower().encode()
_BOUNDARY = re.compile(rb"boundary=\"?([^\";]+)", re.IGNORECASE)


def _boundary(scope: Scope) -> bytes:
    """A multipart body's boundary, from its Content-Type (b"" for other bodies)."""
    for name, value in scope["headers"]:
        if name == b"content-type" and value.lower().startswith(b"multipart/"):
            match = _BOUNDARY.search(value)
            return match[1] if match else b""
    return b""


class IdempotencyKeys:
    def __init__(self, app: ASGIApp, *, renderers: ErrorRenderers) -> None:
        self.app = app
        self.renderers = renderers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == _NAME]
        if not values:
            await self.app(scope, receive, send)
            return
        try:
            key = parse(values[0].decode("latin-1"))
        except InvalidRequest as exc:
            await self.renderers.response(scope["path"], exc)(scope, receive, send)
            return
        current = IdempotentRequest(key)
        query = scope.get("query_string", b"").decode("latin-1")
        current.feed(f"{scope['method']} {scope['path']}?{query}\n".encode())
        current.boundary = _boundary(scope)

        async def hashed() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                current.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    current.finish()
            return message

        token = CURRENT.set(current)
        try:
            await self.app(scope, hashed, send)
        finally:
            CURRENT.reset(token)
