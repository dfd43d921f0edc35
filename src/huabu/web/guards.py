"""What every request passes before any route sees it: a Host this server answers to, and a
path and query that are text.

Hosts: file URLs are signed and absolute, built from ``HUABU_PUBLIC_URL`` or else from the
request's ``Host``; they travel in responses and webhooks. So a Host is trusted, not taken:
it must be one of ``HUABU_ALLOWED_HOSTS`` (default: the bound address, loopback names, and
the public URL's host; ``*`` allows any), or the request is a 400 naming ``Host``.

Path and query: values reach database queries and log lines; one with NUL, a control
character or a lone surrogate (``%00``, ``%0a``, ``%ED%A0%80``) is a 400 naming it, before
any route runs.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from huabu.errors import InvalidRequest
from huabu.settings import Settings
from huabu.web.error_renderers import ErrorRenderers

_NOT_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffd]")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The host names requests may name (any port); None: any host."""
    if "*" in settings.allowed_hosts:
        return None
    names = {name.strip().lower() for name in settings.allowed_hosts if name.strip()}
    if not names:
        names.update(_LOOPBACK)
        if settings.host not in _ANY_ADDRESS:
            names.add(settings.host.lower())
    if settings.public_url:
        public = urlsplit(settings.public_url).hostname
        if public:
            names.add(public.lower())
    return frozenset(names)


def host_name(value: str) -> str:
    """``example.com`` of ``example.com:8000``, ``::1`` of ``[::1]:8000``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class RequestGuard:
    def __init__(self, app: ASGIApp, *, settings: Settings, renderers: ErrorRenderers) -> None:
        self.app = app
        self.allowed = allowed_hosts(settings)
        self.renderers = renderers

    def _refusal(self, scope: Scope) -> InvalidRequest | None:
        if self.allowed is not None:
            for name, value in scope["headers"]:
                if name == b"host":
                    host = host_name(value.decode("latin-1"))
                    if host not in self.allowed:
                        return InvalidRequest(
                            f"Host {host!r} is not a name this server answers to; its operator "
                            "can add it to HUABU_ALLOWED_HOSTS (or set HUABU_PUBLIC_URL)",
                            param="Host",
                        )
                    break
        if _NOT_TEXT.search(scope["path"]):
            return InvalidRequest(
                "the path holds a control character or bytes that are not UTF-8 text",
                param="path",
            )
        query = scope.get("query_string", b"")
        if query:
            try:
                pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
            except (UnicodeDecodeError, ValueError):
                return InvalidRequest("the query string is not UTF-8 text", param="query")
            for key, value in pairs:
                if _NOT_TEXT.search(key) or _NOT_TEXT.search(value):
                    name = key if not _NOT_TEXT.search(key) else "query"
                    return InvalidRequest(
                        f"{name}: holds a control character or is not text", param=name
                    )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self._refusal(scope)
            if refusal is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await self.renderers.response(scope["path"], refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
