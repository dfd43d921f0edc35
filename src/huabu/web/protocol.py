"""uvicorn's httptools protocol with bounds on the request head and on connections.

httptools has no such settings, and uvicorn has none either:
- size: it buffers a header until its end, so a client could make the server hold a 16 MiB
  header in memory. This subclass counts the head while it arrives and answers 431 once it
  passes ``max_header_bytes``; the connection is then closed (what follows a refused head
  cannot be trusted to be a request boundary).
- time: a connection that sends nothing, or a head a byte at a time, would be held open for
  ever. A head (the first one on a new connection, or the next on a kept-alive one once its
  first byte came) must be complete within ``header_timeout`` seconds, or the connection is
  closed.
- count: past ``max_connections`` open connections a new one is closed at once (uvicorn's
  ``limit_concurrency`` answers 503 only once a request's head has been read).

uvicorn is pinned (pyproject.toml) because this leans on its protocol's internals.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASON = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


class HeadTooLarge(Exception):
    """Raised from a parser callback; the parser turns it into its own error."""


class BoundedHead(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    max_connections = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._parsed = 0  # bytes of the URL and the headers the parser has finished
        self._whole_chunks = 0  # bytes of reads that held nothing but head
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.abort()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _check(self) -> None:
        if max(self._parsed, self._whole_chunks) > self.max_header_bytes:
            self._refused = True
            raise HeadTooLarge

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._parsed, self._whole_chunks = True, 0, 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        self._check()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF
        self._check()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        in_head_before = self._in_head
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if in_head_before and self._in_head:  # this whole read was part of one head
            self._whole_chunks += len(data)
            try:
                self._check()
            except HeadTooLarge:
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
            return
        text = f"the request line and headers are over {self.max_header_bytes} bytes".encode()
        self.transport.write(
            _REASON
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: "
            + str(len(text)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + text
        )
        self.transport.close()


def bounded_head(
    max_header_bytes: int, *, header_timeout: float = 10.0, max_connections: int = 1000
) -> type[BoundedHead]:
    """The protocol class for uvicorn's ``http=`` with these bounds."""
    bounds = {
        "max_header_bytes": max_header_bytes,
        "header_timeout": header_timeout,
        "max_connections": max_connections,
    }
    return type("BoundedHead", (BoundedHead,), bounds)
