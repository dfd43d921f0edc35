"""Request body size cap, enforced before and while the body is read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from huabu.errors import TooLarge
from huabu.web.errors import ErrorRenderers


class BodyLimit:
    """Refuse bodies over ``max_bytes``: at once from Content-Length, or as soon as a
    chunked body passes the limit (raised into the handler, rendered in its dialect)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, renderers: ErrorRenderers) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.renderers = renderers

    def _error(self) -> TooLarge:
        return TooLarge(f"request body is over the limit of {self.max_bytes} bytes", param="body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = self.renderers.response(scope["path"], self._error())
                await response(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counted, send)
