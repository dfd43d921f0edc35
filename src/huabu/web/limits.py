"""Request body size cap, enforced before and while the body is read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from huabu.errors import TooLarge
from huabu.web.error_renderers import ErrorRenderers


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with a 413 in the caller's dialect: at once from
    Content-Length, or as soon as a chunked body passes the limit (whatever the route was
    doing with it)."""

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
        seen, exceeded, answered = 0, False, False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise self._error()
            return message

        async def answer_413() -> None:
            nonlocal answered
            if not answered:
                answered = True
                await self.renderers.response(scope["path"], self._error())(scope, receive, send)

        async def guarded(message: Message) -> None:
            # Whatever the app made of a body cut short (a form parser's 400, say), the answer
            # is the 413 it deserves.
            if not exceeded:
                await send(message)
            elif message["type"] == "http.response.start":
                await answer_413()

        try:
            await self.app(scope, counted, guarded)
        except TooLarge:
            if not exceeded:
                raise
            await answer_413()
